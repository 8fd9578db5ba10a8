"""Triton model folders of the other frameworks, config.pbtxt only, served by a real
``modelport serve``: a TensorFlow SavedModel in ``1/model.savedmodel/`` and TorchScript
in ``1/model.pt`` (or the file ``default_model_filename`` names, with a ``reshape``).

The server imports TensorFlow; the test process never does (see support/tf_builders).
"""

from __future__ import annotations

import shutil
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from support.tf_builders import B, W, X, build_saved_model
from support.triton_repos import write_triton_model

pytestmark = pytest.mark.timeout(180)

TF_CONFIG = """\
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""
TORCH_CONFIG = """\
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""
# The same TorchScript under another name, served as [2, 2] and given to it as [4].
RESHAPED_CONFIG = """\
backend: "pytorch"
default_model_filename: "linear.pt"
max_batch_size: 8
input [
  { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 2, 2 ], reshape: { shape: [ 4 ] } }
]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""


@dataclass(frozen=True)
class Served:
    url: str
    tf_expected: np.ndarray
    torch_expected: np.ndarray


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchscript(path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated, and still served
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(linear), str(path))
    return linear


@pytest.fixture(scope="module")
def served(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("triton-frameworks")
    built = root / "built"
    expected = build_saved_model(built)
    folder = write_triton_model(root / "models", "tf_linear", TF_CONFIG)
    shutil.copytree(built, folder / "1" / "model.savedmodel")
    folder = write_triton_model(root / "models", "torch_linear", TORCH_CONFIG)
    linear = _torchscript(folder / "1" / "model.pt")
    folder = write_triton_model(root / "models", "torch_reshaped", RESHAPED_CONFIG)
    shutil.copytree(root / "models" / "torch_linear" / "1", folder / "1")
    (folder / "1" / "model.pt").rename(folder / "1" / "linear.pt")
    with torch.no_grad():
        torch_expected = linear(torch.from_numpy(X)).numpy()
    process = server_factory(repo=root / "models", grpc_port=_free_port())
    yield Served(process.url, expected["y"], torch_expected)
    process.stop()


def _infer(served: Served, model: str, name: str, x: np.ndarray) -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def test_a_savedmodel_in_model_savedmodel_serves(served: Served) -> None:
    result = _infer(served, "tf_linear", "x", X)
    np.testing.assert_allclose(result.as_numpy("y"), served.tf_expected, rtol=1e-6)
    np.testing.assert_allclose(served.tf_expected, X @ W + B, rtol=1e-5)
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    config = client.get_model_config("tf_linear")
    assert (config["platform"], config["backend"]) == ("tensorflow_savedmodel", "tensorflow")
    assert config["default_model_filename"] == "model.savedmodel"


def test_torchscript_serves_and_a_named_file_takes_a_reshaped_input(served: Served) -> None:
    result = _infer(served, "torch_linear", "INPUT__0", X)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), served.torch_expected, rtol=1e-5)
    reshaped = _infer(served, "torch_reshaped", "INPUT__0", X.reshape(-1, 2, 2))
    np.testing.assert_allclose(reshaped.as_numpy("OUTPUT__0"), served.torch_expected, rtol=1e-5)
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    config = client.get_model_config("torch_reshaped")
    assert config["platform"] == "pytorch_libtorch"
    assert config["default_model_filename"] == "linear.pt"
    assert config["input"][0]["reshape"] == {"shape": [4]}
