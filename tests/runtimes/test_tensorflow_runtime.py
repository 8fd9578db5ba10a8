"""The ``tensorflow`` runtime: a SavedModel built by TensorFlow for the test
(``tests/support/tf_builders.py``), served by a real ``modelport serve`` and called with the real
Triton clients and over TF Serving's REST API; numbers checked against TensorFlow's own.

The test process never imports TensorFlow (see tf_builders): the server does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelport.core.repository import ModelRepository
from modelport.core.service import InferenceService
from modelport.errors import SpecError
from modelport.runtimes.tensorflow import TensorflowRuntime
from support.builders import write_model
from support.tf_builders import HALF, SIGNATURES, TEXT, B, W, X, build_saved_model

pytestmark = pytest.mark.timeout(120)


@dataclass
class TfServer:
    url: str
    grpc: str
    expected: dict[str, np.ndarray]
    process: Any  # conftest.ServerProcess


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """The SavedModel's version folder and TensorFlow's outputs (built once per module)."""
    version = tmp_path_factory.mktemp("savedmodel") / "1"
    return version, build_saved_model(version)


def _tf_model(root: Path, name: str, yaml: str, version: Path) -> None:
    write_model(root, name, yaml)
    shutil.copytree(version, root / name / "1")


@pytest.fixture(scope="module")
def tf_server(
    server_factory: Any,
    saved_model: tuple[Path, dict[str, np.ndarray]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TfServer]:
    version, expected = saved_model
    root = tmp_path_factory.mktemp("tf-repository")
    _tf_model(root, "linear", "runtime: tensorflow\nmax_batch_size: 8\n", version)
    doubled = "runtime: tensorflow\nmax_batch_size: 8\nparameters: {signature_name: doubled}\n"
    _tf_model(root, "linear_doubled", doubled, version)
    text = "runtime: tensorflow\nmax_batch_size: 8\nparameters: {signature_name: text}\n"
    _tf_model(root, "text", text, version)
    half = "runtime: tensorflow\nmax_batch_size: 4\nparameters: {signature_name: half}\n"
    _tf_model(root, "half", half, version)
    _tf_model(root, "unbatched", "runtime: tensorflow\nthreads: {intra_op: 2}\n", version)
    nope = "runtime: tensorflow\nmax_batch_size: 8\nparameters: {signature_name: nope}\n"
    _tf_model(root, "bad_default", nope, version)
    write_model(root, "no_files", "runtime: tensorflow\n", {"1/README": "no SavedModel"})
    port = _free_port()
    proc = server_factory(repo=root, grpc_port=port)
    yield TfServer(proc.url, f"127.0.0.1:{port}", expected, proc)
    proc.stop()


def _index(url: str) -> dict[str, dict[str, str]]:
    rows = httpx.post(url + "/v2/repository/index", json={}).json()
    return {row["name"]: row for row in rows}


def _http_input(name: str, array: np.ndarray, datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_signature_is_read_from_the_saved_model(tf_server: TfServer) -> None:
    meta = httpx.get(tf_server.url + "/v2/models/linear").json()
    assert meta["platform"] == "tensorflow_savedmodel"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    text = httpx.get(tf_server.url + "/v2/models/text").json()
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {(t["name"], t["datatype"]) for t in text["outputs"]} == {
        ("length", "INT32"),
        ("upper", "BYTES"),
    }
    # Without batching, the signature's unknown first dimension is just a variable one.
    unbatched = httpx.get(tf_server.url + "/v2/models/unbatched/config").json()
    assert unbatched["max_batch_size"] == 0
    assert unbatched["input"][0]["dims"] == [-1, 4]


def test_v2_http_matches_tensorflow(tf_server: TfServer) -> None:
    client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
    result = client.infer("linear", [_http_input("x", X, "FP32")])
    np.testing.assert_allclose(result.as_numpy("y"), tf_server.expected["y"], rtol=1e-6)
    np.testing.assert_allclose(tf_server.expected["y"], X @ W + B, rtol=1e-5)


def test_v2_grpc_matches_tensorflow(tf_server: TfServer) -> None:
    with grpcclient.InferenceServerClient(tf_server.grpc) as client:
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        result = client.infer("linear", [x])
        np.testing.assert_allclose(result.as_numpy("y"), tf_server.expected["y"], rtol=1e-6)
        half = grpcclient.InferInput("h", list(HALF.shape), "FP16")
        half.set_data_from_numpy(HALF)
        h2 = client.infer("half", [half]).as_numpy("h2")
        assert h2.dtype == np.float16
        np.testing.assert_array_equal(h2, tf_server.expected["h2"])


def test_tfserving_rest_matches_tensorflow(tf_server: TfServer) -> None:
    rows = httpx.post(
        tf_server.url + "/v1/models/linear:predict", json={"instances": X.tolist()}
    ).json()
    np.testing.assert_allclose(rows["predictions"], tf_server.expected["y"], rtol=1e-6)
    columns = httpx.post(
        tf_server.url + "/v1/models/linear:predict", json={"inputs": {"x": X.tolist()}}
    ).json()
    np.testing.assert_allclose(columns["outputs"], tf_server.expected["y"], rtol=1e-6)


def test_bytes_in_and_out(tf_server: TfServer) -> None:
    client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
    result = client.infer("text", [_http_input("text", TEXT, "BYTES")])
    np.testing.assert_array_equal(result.as_numpy("length"), tf_server.expected["length"])
    assert result.as_numpy("upper").tolist() == tf_server.expected["upper"].tolist()
    # TF Serving's REST API: strings as text, or binary as {"b64": ...}.
    body = {"instances": ["tf", {"b64": "bW9kZWxwb3J0"}]}
    answer = httpx.post(tf_server.url + "/v1/models/text:predict", json=body).json()
    assert answer["predictions"] == [
        {"length": 2, "upper": "TF"},
        {"length": 9, "upper": "MODELPORT"},
    ]


def test_fp16_over_tfserving_rest(tf_server: TfServer) -> None:
    answer = httpx.post(
        tf_server.url + "/v1/models/half:predict", json={"instances": HALF.tolist()}
    ).json()
    np.testing.assert_array_equal(answer["predictions"], tf_server.expected["h2"].tolist())


def test_model_yaml_picks_the_served_signature(tf_server: TfServer) -> None:
    client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
    result = client.infer("linear_doubled", [_http_input("x", X, "FP32")])
    np.testing.assert_allclose(result.as_numpy("y"), tf_server.expected["doubled"], rtol=1e-6)


def test_a_request_picks_another_signature(tf_server: TfServer) -> None:
    client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
    x = _http_input("x", X, "FP32")
    result = client.infer("linear", [x], parameters={"signature_name": "doubled"})
    np.testing.assert_allclose(result.as_numpy("y"), tf_server.expected["doubled"], rtol=1e-6)
    body = {"signature_name": "doubled", "instances": X.tolist()}
    rows = httpx.post(tf_server.url + "/v1/models/linear:predict", json=body).json()
    np.testing.assert_allclose(rows["predictions"], tf_server.expected["doubled"], rtol=1e-6)
    # And back: the model whose default is 'doubled' runs serving_default when asked.
    body["signature_name"] = "serving_default"
    rows = httpx.post(tf_server.url + "/v1/models/linear_doubled:predict", json=body).json()
    np.testing.assert_allclose(rows["predictions"], tf_server.expected["y"], rtol=1e-6)


def test_an_unknown_signature_is_a_400_listing_the_known_ones(tf_server: TfServer) -> None:
    body = {"signature_name": "nope", "instances": X.tolist()}
    answer = httpx.post(tf_server.url + "/v1/models/linear:predict", json=body)
    assert answer.status_code == 400
    assert "no signature 'nope'" in answer.json()["error"]
    assert str(SIGNATURES) in answer.json()["error"]
    client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
    x = _http_input("x", X, "FP32")
    with pytest.raises(InferenceServerException, match="no signature 'nope'") as raised:
        client.infer("linear", [x], parameters={"signature_name": "nope"})
    assert raised.value.status() == "400"
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        "parameters": {"signature_name": 5},
    }
    answer = httpx.post(tf_server.url + "/v2/models/linear/infer", json=body)
    assert answer.status_code == 400 and "no signature 5" in answer.json()["error"]
    # The server keeps serving.
    np.testing.assert_allclose(
        client.infer("linear", [x]).as_numpy("y"), tf_server.expected["y"], rtol=1e-6
    )


def test_a_signature_with_other_tensors_says_how_to_serve_it(tf_server: TfServer) -> None:
    body = {"signature_name": "text", "instances": X.tolist()}
    answer = httpx.post(tf_server.url + "/v1/models/linear:predict", json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "other inputs or outputs" in error
    assert "parameters: {signature_name: text}" in error


def test_concurrent_requests_batch_and_each_gets_its_rows(tf_server: TfServer) -> None:
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((int(n), 4)).astype(np.float32) for n in rng.integers(1, 5, 24)]

    def call(x: np.ndarray) -> np.ndarray:
        client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
        return np.asarray(client.infer("linear", [_http_input("x", x, "FP32")]).as_numpy("y"))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, rows))
    for x, y in zip(rows, answers, strict=True):
        np.testing.assert_allclose(y, x @ W + B, rtol=1e-5, atol=1e-5)


def test_unbatched_model_takes_the_whole_tensor(tf_server: TfServer) -> None:
    client = httpclient.InferenceServerClient(tf_server.url.removeprefix("http://"))
    result = client.infer("unbatched", [_http_input("x", X, "FP32")])
    np.testing.assert_allclose(result.as_numpy("y"), tf_server.expected["y"], rtol=1e-6)


def test_unusable_models_are_unavailable_with_the_reason(tf_server: TfServer) -> None:
    index = _index(tf_server.url)
    bad = index["bad_default"]
    assert bad["state"] == "UNAVAILABLE"
    assert "parameters.signature_name" in bad["reason"] and str(SIGNATURES) in bad["reason"]
    assert index["no_files"]["state"] == "UNAVAILABLE"
    assert "no saved_model.pb" in index["no_files"]["reason"]
    assert index["linear"]["state"] == "READY"


def test_threads_are_process_wide_and_a_second_choice_is_reported(tf_server: TfServer) -> None:
    # 'unbatched' asks for intra_op 2, the others for the default 1: whichever loads
    # second is told that TensorFlow's pools are already set.
    assert "TensorFlow's thread pools are process-wide" in tf_server.process.log()


# -- without TensorFlow, and the repository's reading of TF Serving folders -------------


def test_importing_modelport_does_not_import_tensorflow() -> None:
    code = "import sys, modelport.server.serve; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_without_tensorflow_the_model_is_unavailable_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a machine without the extra: a None entry makes the import fail.
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    write_model(tmp_path, "m", "runtime: tensorflow\n", {"1/saved_model.pb": b""})
    service = InferenceService(
        ModelRepository(tmp_path), {"tensorflow": TensorflowRuntime}, name="m", version="test"
    )
    try:
        await service.open()
        (row,) = service.index()
    finally:
        await service.close()
    assert row.state == "UNAVAILABLE"
    assert "pip install 'modelport[tensorflow]'" in row.reason


def test_a_tf_serving_folder_needs_no_model_yaml(tmp_path: Path) -> None:
    (tmp_path / "bare" / "3").mkdir(parents=True)
    (tmp_path / "bare" / "3" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "plain" / "1").mkdir(parents=True)
    repository = ModelRepository(tmp_path)
    source = repository.source("bare")
    assert source.spec.runtime == "tensorflow"
    assert source.spec.max_batch_size == 128
    assert source.versions == (3,)
    with pytest.raises(SpecError, match=r"model\.yaml: missing"):
        repository.source("plain")
