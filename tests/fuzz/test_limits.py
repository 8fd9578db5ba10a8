"""Each limit crossed against a real server: the answer names the limit's setting, and
the server keeps serving. The server runs with small limits so small requests cross them.
"""

from __future__ import annotations

import socket
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from modelport.protos.tensorflow.core.framework import types_pb2
from modelport.protos.tensorflow_serving.apis import predict_pb2

TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"
LIMITS = {
    "MODELPORT_MAX_TENSOR_ELEMENTS": "40",
    "MODELPORT_MAX_REQUEST_BYTES": "4096",
    "MODELPORT_GRPC_MAX_MESSAGE_BYTES": "4096",
    "MODELPORT_TASK_MAX_UPLOAD_BYTES": "2048",
    "MODELPORT_TASK_SLOTS": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Limited:
    def __init__(self, server_factory: Any, env: dict[str, str]) -> None:
        self.grpc = f"127.0.0.1:{free_port()}"
        self.proc = server_factory(env=env, grpc_port=int(self.grpc.rsplit(":", 1)[1]))
        self.url = self.proc.url

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/v2/health/ready").status_code == 200


@pytest.fixture(scope="module")
def limited(server_factory: Any) -> Limited:
    return Limited(server_factory, LIMITS)


@pytest.fixture(scope="module")
def default(server_factory: Any) -> Limited:
    return Limited(server_factory, {"MODELPORT_TASK_SLOTS": "0"})


def _rows(n: int, width: int = 4) -> list[float]:
    return [1.0] * (n * width)


def _v2_json(rows: int) -> dict[str, Any]:
    return {"inputs": [{"name": n, "datatype": "FP32", "shape": [rows, 4], "data": _rows(rows)}
                       for n in ("INPUT0", "INPUT1")]}  # fmt: skip


def _tfs_request(shape: list[int], values: int) -> bytes:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "add_sub"
    for name in ("INPUT0", "INPUT1"):
        tensor = message.inputs[name]
        tensor.dtype = types_pb2.DT_FLOAT
        for size in shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.float_val.extend([1.0] * values)
    return message.SerializeToString()


def _grpc_error(target: str, method: str, raw: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method)(raw, timeout=10)
    return caught.value


# -- max_tensor_elements ------------------------------------------------------------------


def test_too_many_elements_over_http_json_and_tfserving_rest(limited: Limited) -> None:
    # add_sub batches up to 8 rows of 4: 12 rows are 48 elements, over the limit of 40.
    json = httpx.post(f"{limited.url}/v2/models/add_sub/infer", json=_v2_json(12))
    assert json.status_code == 400
    assert "has 48 elements" in json.json()["error"]
    assert "max_tensor_elements" in json.json()["error"]
    rest = httpx.post(
        f"{limited.url}/v1/models/add_sub:predict",
        json={"instances": [{"INPUT0": _rows(1), "INPUT1": _rows(1)}] * 12},
    )
    assert rest.status_code == 400 and "max_tensor_elements" in rest.json()["error"]  # fmt: skip
    fine = httpx.post(f"{limited.url}/v2/models/add_sub/infer", json=_v2_json(2))
    assert fine.status_code == 200, fine.text


def test_too_many_elements_over_binary_and_grpc(limited: Limited) -> None:
    data = np.ones((12, 4), np.float32)
    with triton_http.InferenceServerClient(limited.url.removeprefix("http://")) as client:
        inputs = [triton_http.InferInput(n, [12, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        for x in inputs:
            x.set_data_from_numpy(data, binary_data=True)
        with pytest.raises(InferenceServerException, match="max_tensor_elements"):
            client.infer("add_sub", inputs)
    with triton_grpc.InferenceServerClient(limited.grpc) as client:
        inputs = [triton_grpc.InferInput(n, [12, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        for x in inputs:
            x.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException, match="max_tensor_elements") as caught:
            client.infer("add_sub", inputs)
        assert "INVALID_ARGUMENT" in str(caught.value.status())


def test_a_tiny_tfserving_message_cannot_claim_a_huge_tensor(default: Limited) -> None:
    """TF Serving pads a short value list to the shape; one value with a shape of 10^12
    elements is refused before anything is allocated, with the default limit."""
    error = _grpc_error(default.grpc, TFS_PREDICT, _tfs_request([10**6, 10**6], 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000000000000 elements" in error.details() and "max_tensor_elements" in error.details()
    assert default.healthy()


# -- max_batch_size -----------------------------------------------------------------------


def test_a_batch_over_max_batch_size_names_it_on_every_protocol(default: Limited) -> None:
    url = default.url
    json = httpx.post(f"{url}/v2/models/add_sub/infer", json=_v2_json(9))
    assert json.status_code == 400 and "max_batch_size" in json.json()["error"], json.text
    rest = httpx.post(
        f"{url}/v1/models/add_sub:predict",
        json={"instances": [{"INPUT0": _rows(1), "INPUT1": _rows(1)}] * 9},
    )
    assert rest.status_code == 400 and "max_batch_size" in rest.json()["error"]  # fmt: skip
    data = np.ones((9, 4), np.float32)
    with triton_http.InferenceServerClient(url.removeprefix("http://")) as client:
        inputs = [triton_http.InferInput(n, [9, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        for x in inputs:
            x.set_data_from_numpy(data, binary_data=True)
        with pytest.raises(InferenceServerException, match="max_batch_size"):
            client.infer("add_sub", inputs)
    with triton_grpc.InferenceServerClient(default.grpc) as client:
        inputs = [triton_grpc.InferInput(n, [9, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        for x in inputs:
            x.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException, match="max_batch_size"):
            client.infer("add_sub", inputs)
    error = _grpc_error(default.grpc, TFS_PREDICT, _tfs_request([9, 4], 36))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch_size" in error.details()


# -- sizes: bodies, gRPC messages, uploads ------------------------------------------------


def test_bodies_over_max_request_bytes_get_413_on_every_route(limited: Limited) -> None:
    big = {"instances": [[0.0] * 4] * 400}  # ~8 KiB of JSON
    for path in ("/v2/models/add_sub/infer", "/v1/models/add_sub:predict",
                 "/v2/repository/index"):  # fmt: skip
        response = httpx.post(limited.url + path, json=big)
        assert response.status_code == 413, (path, response.text)
        assert "max_request_bytes" in response.json()["error"]

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1024

    chunked = httpx.post(f"{limited.url}/v1/models/add_sub:predict", content=chunks())
    assert chunked.status_code == 413 and "max_request_bytes" in chunked.json()["error"]
    assert limited.healthy()


def test_a_grpc_message_over_the_limit_is_resource_exhausted(limited: Limited) -> None:
    big = _tfs_request([1, 4], 4) * 60  # concatenated messages parse as one: ~5 KiB
    assert len(big) > 4096
    error = _grpc_error(limited.grpc, TFS_PREDICT, big)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4096" in error.details()
    assert limited.healthy()


def test_an_upload_over_the_limit_is_413_naming_the_setting(limited: Limited) -> None:
    for path in ("/api/tasks", "/compat/inference-server/api/tasks/"):
        response = httpx.post(limited.url + path, data={"model": "x"},
                              files={"zip_file": ("a.zip", b"x" * 4096)})  # fmt: skip
        assert response.status_code == 413, (path, response.text)
        # modelport's own API answers {"error"}, the zip-task cluster API {"detail"}.
        body = response.json()
        assert "task_max_upload_bytes" in body.get("error", body.get("detail", ""))
