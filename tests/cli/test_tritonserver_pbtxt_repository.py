"""A Triton repository as a Triton team has it, served by ``modelport tritonserver`` with
Triton's own command line and driven by tritonclient (HTTP and gRPC): config.pbtxt only,
no model.yaml anywhere. An ONNX model, a python-backend model (``TritonPythonModel``), a
BLS model calling the ONNX one, an ensemble of the ONNX model and the python one, and a
model left unloaded by ``--model-control-mode explicit`` until the repository API loads
it; classification with ``class_count`` on the ONNX outputs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.builders import add_sub_onnx
from support.command_servers import CommandServer, free_port, start_command
from support.triton_python_models import ADD_SUB, BLS

pytestmark = pytest.mark.timeout(180)

ONNX_PBTXT = """\
name: "addsub_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

PYTHON_PBTXT = """\
name: "addsub_python"
backend: "python"
max_batch_size: 16
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "GATHERED" data_type: TYPE_INT32 dims: [ 1 ] }
]
parameters { key: "delay_ms" value: { string_value: "5" } }
instance_group [ { kind: KIND_CPU } ]
"""

BLS_PBTXT = """\
name: "bls"
backend: "python"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [ { name: "PRODUCT" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

# The ONNX model's sum and difference, then the python model adds and subtracts those:
# OUT_SUM = (a+b)+(a-b) = 2a, OUT_DIFF = (a+b)-(a-b) = 2b.
ENSEMBLE_PBTXT = """\
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUT_SUM" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUT_DIFF" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "addsub_onnx"
      model_version: -1
      input_map { key: "INPUT0" value: "A" }
      input_map { key: "INPUT1" value: "B" }
      output_map { key: "OUTPUT0" value: "s" }
      output_map { key: "OUTPUT1" value: "d" }
    },
    {
      model_name: "addsub_python"
      model_version: -1
      input_map { key: "INPUT0" value: "s" }
      input_map { key: "INPUT1" value: "d" }
      output_map { key: "OUTPUT0" value: "OUT_SUM" }
      output_map { key: "OUTPUT1" value: "OUT_DIFF" }
    }
  ]
}
"""

LATER_PBTXT = ONNX_PBTXT.replace('name: "addsub_onnx"', 'name: "later"')


def _write(root: Path, name: str, config: str, files: dict[str, str]) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    for relative, text in files.items():
        (folder / relative).write_text(text)
    return folder


def triton_repository(root: Path) -> Path:
    onnx = _write(root, "addsub_onnx", ONNX_PBTXT, {"labels.txt": "zero\none\ntwo\nthree\n"})
    add_sub_onnx(onnx / "1" / "model.onnx")
    _write(root, "addsub_python", PYTHON_PBTXT, {"1/model.py": ADD_SUB})
    _write(root, "bls", BLS_PBTXT, {"1/model.py": BLS})
    _write(root, "pipeline", ENSEMBLE_PBTXT, {})
    later = _write(root, "later", LATER_PBTXT, {"labels.txt": "a\nb\nc\nd\n"})
    add_sub_onnx(later / "1" / "model.onnx")
    assert not list(root.rglob("model.yaml"))
    return root


@dataclass
class Served:
    server: CommandServer
    http: str
    grpc: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repository = triton_repository(tmp_path_factory.mktemp("triton-repository"))
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = ["tritonserver", f"--model-repository={repository}", "--model-control-mode=explicit"]
    for model in ("addsub_onnx", "addsub_python", "bls", "pipeline"):
        args += ["--load-model", model]
    args += [f"--http-port={http}", "--grpc-port", str(grpc), f"--metrics-port={metrics}"]
    server = start_command(
        args, log_path=tmp_path_factory.mktemp("logs") / "triton.log", http_port=http
    )
    server.wait_ready()
    yield Served(server, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}")
    server.stop()


A = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
B = np.array([[0.5, 0.5, 1, 1], [2, 2, 2, 2]], dtype=np.float32)


def _inputs(module: Any, names: tuple[str, str]) -> list[Any]:
    tensors = []
    for name, data in zip(names, (A, B), strict=True):
        tensor = module.InferInput(name, list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


def _client(served: Served, protocol: str) -> tuple[Any, Any]:
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(served.http)
    return grpcclient, grpcclient.InferenceServerClient(served.grpc)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_kind_of_model_answers_from_config_pbtxt_alone(served: Served, protocol: str) -> None:
    module, client = _client(served, protocol)
    onnx = client.infer("addsub_onnx", _inputs(module, ("INPUT0", "INPUT1")))
    np.testing.assert_allclose(onnx.as_numpy("OUTPUT0"), A + B)
    python = client.infer("addsub_python", _inputs(module, ("INPUT0", "INPUT1")))
    np.testing.assert_allclose(python.as_numpy("OUTPUT1"), A - B)
    bls = client.infer("bls", _inputs(module, ("A", "B")))
    np.testing.assert_allclose(bls.as_numpy("PRODUCT"), (A + B) * (A - B))
    pipeline = client.infer("pipeline", _inputs(module, ("A", "B")))
    np.testing.assert_allclose(pipeline.as_numpy("OUT_SUM"), 2 * A)
    np.testing.assert_allclose(pipeline.as_numpy("OUT_DIFF"), 2 * B)
    config = client.get_model_config(
        "addsub_python", **({"as_json": True} if protocol == "grpc" else {})
    )
    config = config["config"] if protocol == "grpc" else config
    assert config["backend"] == "python"
    assert [t["name"] for t in config["output"]] == ["OUTPUT0", "OUTPUT1", "GATHERED"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_class_count_answers_the_top_classes_with_labels(served: Served, protocol: str) -> None:
    module, client = _client(served, protocol)
    wanted = [module.InferRequestedOutput("OUTPUT0", class_count=2)]
    result = client.infer("addsub_onnx", _inputs(module, ("INPUT0", "INPUT1")), outputs=wanted)
    top = result.as_numpy("OUTPUT0")
    assert top.shape == (2, 2)
    # Row 0 sums to [1.5, 2.5, 4, 5]: classes 3 then 2, labelled from labels.txt.
    assert [x.decode() for x in top[0]] == ["5.000000:3:three", "4.000000:2:two"]


def test_explicit_mode_leaves_a_model_unloaded_until_the_api_loads_it(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.http)
    assert not client.is_model_ready("later")
    with pytest.raises(InferenceServerException):
        client.infer("later", _inputs(httpclient, ("INPUT0", "INPUT1")))
    client.load_model("later")
    assert client.is_model_ready("later")
    answer = client.infer("later", _inputs(httpclient, ("INPUT0", "INPUT1")))
    np.testing.assert_allclose(answer.as_numpy("OUTPUT0"), A + B)
    index = {row["name"]: row.get("state") for row in client.get_model_repository_index()}
    assert index["later"] == "READY" and index["pipeline"] == "READY"
