"""API keys over gRPC, against a real server with a keys file, with real clients:
tritonclient.grpc (``headers=``), TF Serving's stubs and the health stub (metadata)."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tfs_client.tensorflow.core.framework import tensor_pb2, types_pb2
from tfs_client.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.security.keys import KeyStore
from support.auth_fixtures import Gate, build_auth_repository, loopback_port, wait_until

pytestmark = pytest.mark.timeout(60)


@dataclass
class KeyedGrpc:
    target: str
    tokens: dict[str, str]
    gate: Gate


@pytest.fixture(scope="module")
def keyed(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> KeyedGrpc:
    root = tmp_path_factory.mktemp("auth-grpc")
    repo, gate = build_auth_repository(root)
    store = KeyStore(root / "keys.json")
    tokens = {s: store.create(f"{s}-only", [s]).token for s in ("infer", "tasks", "admin")}
    env = {"MODELPORT_KEYS_FILE": str(store.path), "MODELPORT_MAX_CONCURRENT_PER_KEY": "1"}
    port = loopback_port()
    server_factory(repo=repo, env=env, grpc_port=port)
    return KeyedGrpc(f"127.0.0.1:{port}", tokens, gate)


def bearer(token: str) -> dict[str, str]:
    # gRPC metadata keys are lower case; the HTTP header's 'Authorization' is refused.
    return {"authorization": f"Bearer {token}"}


def _inputs() -> list[triton.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton.InferInput(name, [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        inputs.append(tensor)
    return inputs


def _status(caught: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(caught.value.status())


def test_health_needs_no_key(keyed: KeyedGrpc) -> None:
    client = triton.InferenceServerClient(keyed.target)
    assert client.is_server_live() and client.is_server_ready()
    with grpc.insecure_channel(keyed.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    client.close()


def test_kserve_calls_need_a_key_with_the_scope(keyed: KeyedGrpc) -> None:
    client = triton.InferenceServerClient(keyed.target)
    with pytest.raises(InferenceServerException, match="Authorization: Bearer") as caught:
        client.infer("add_sub", _inputs())
    assert _status(caught) == str(grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(InferenceServerException, match="not valid") as caught:
        client.get_model_metadata("add_sub", headers=bearer("mp_x_y"))
    assert _status(caught) == str(grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(InferenceServerException, match="'infer' scope") as caught:
        client.infer("add_sub", _inputs(), headers=bearer(keyed.tokens["tasks"]))
    assert _status(caught) == str(grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(InferenceServerException, match="'admin' scope") as caught:
        client.unload_model("add_sub", headers=bearer(keyed.tokens["infer"]))
    assert _status(caught) == str(grpc.StatusCode.PERMISSION_DENIED)

    result = client.infer("add_sub", _inputs(), headers=bearer(keyed.tokens["infer"]))
    assert result.as_numpy("OUTPUT0").tolist() == [[2.0] * 4]
    client.load_model("add_sub", headers=bearer(keyed.tokens["admin"]))
    assert client.is_model_ready("add_sub", headers=bearer(keyed.tokens["infer"]))
    client.close()


def test_a_stream_needs_a_key_too(keyed: KeyedGrpc) -> None:
    results: list[Any] = []
    client = triton.InferenceServerClient(keyed.target)
    client.start_stream(lambda result, error: results.append(result or error),
                        headers=bearer(keyed.tokens["infer"]))  # fmt: skip
    client.async_stream_infer("add_sub", _inputs())
    client.stop_stream()
    assert results[0].as_numpy("OUTPUT1").tolist() == [[0.0] * 4]
    refused: list[Any] = []
    client.start_stream(lambda result, error: refused.append(error))
    # The call is refused as it opens; sending on it may already find it closed.
    with contextlib.suppress(InferenceServerException):
        client.async_stream_infer("add_sub", _inputs())
    wait_until(lambda: bool(refused), "the refusal of a stream without a key")
    client.stop_stream()
    assert "Authorization: Bearer" in str(refused[0])
    assert str(grpc.StatusCode.UNAUTHENTICATED) in str(refused[0])
    client.close()


def _predict_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "add_sub"
    for name in ("INPUT0", "INPUT1"):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0, 3.0, 4.0])
        proto.tensor_shape.dim.add(size=1)
        proto.tensor_shape.dim.add(size=4)
        request.inputs[name].CopyFrom(proto)
    return request


def test_tf_serving_predict_takes_the_key_in_metadata(keyed: KeyedGrpc) -> None:
    with grpc.insecure_channel(keyed.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(_predict_request(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {keyed.tokens['infer']}"),)
        answer = stub.Predict(_predict_request(), timeout=10, metadata=metadata)
    out = answer.outputs["OUTPUT0"]
    values = list(out.float_val) or np.frombuffer(out.tensor_content, "<f4").tolist()
    assert values == [2.0, 4.0, 6.0, 8.0]


def test_a_key_past_its_calls_in_progress_gets_resource_exhausted(keyed: KeyedGrpc) -> None:
    client = triton.InferenceServerClient(keyed.target)
    gate_input = triton.InferInput("x", [1, 1], "FP32")
    gate_input.set_data_from_numpy(np.full((1, 1), 7.0, np.float32))
    infer = bearer(keyed.tokens["infer"])
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.infer, "gate", [gate_input], headers=infer)
        keyed.gate.wait_entered()
        with grpc.insecure_channel(keyed.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            metadata = (("authorization", f"Bearer {keyed.tokens['infer']}"),)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(_predict_request(), timeout=10, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_per_key" in str(caught.value.details())
        assert ("retry-after", "1") in tuple(caught.value.trailing_metadata())
        keyed.gate.open()
        assert held.result().as_numpy("y").tolist() == [[7.0]]
    client.close()
