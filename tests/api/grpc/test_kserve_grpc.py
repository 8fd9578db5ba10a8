"""Triton's own gRPC client (``tritonclient.grpc``) against a real modelport process.

Typed ``contents`` requests, which tritonclient never sends, are built with
tritonclient's own generated messages and sent over a plain grpc channel.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from support.builders import ONNX_TYPES

pytestmark = pytest.mark.timeout(30)

IDENTITY_MODELS = {datatype: f"identity_{datatype.lower()}" for datatype in ONNX_TYPES}
# The typed list of InferTensorContents each datatype travels in (KServe v2 spec).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

A = np.array([[1.5, 2.0, -3.25, 4.0], [0.0, 10.0, 20.0, 30.0]], dtype=np.float32)
B = np.array([[0.5, 1.0, 1.25, -4.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[triton.InferInput]:
    inputs = []
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def error_of(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.fixture
def stub(grpc_server: Any) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_server_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelport"
    assert meta["version"]
    assert {"model_repository", "statistics", "model_configuration"} <= set(meta["extensions"])


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub", as_json=True)
    assert meta["name"] == "add_sub"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]},
        {"name": "INPUT1", "datatype": "FP32", "shape": ["-1", "4"]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert client.get_model_metadata("add_sub", "1").name == "add_sub"


def test_model_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("add_sub", as_json=True)["config"]
    assert config["name"] == "add_sub"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnx"
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": ["4"]}
    assert config["output"][1]["name"] == "OUTPUT1"
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    assert "dynamic_batching" in config
    bytes_config = client.get_model_config("identity_bytes").config
    assert bytes_config.input[0].data_type == triton.model_config_pb2.TYPE_STRING
    slow = client.get_model_config("slow").config
    assert slow.backend == "fake"
    assert slow.max_batch_size == 1


def test_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no_such_model")


def test_infer_raw_tensors(client: triton.InferenceServerClient) -> None:
    result = client.infer("add_sub", add_sub_inputs(A, B), request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("add_sub", "1", "req-7")
    assert len(response.raw_output_contents) == 2  # tritonclient sent raw: answered raw
    assert [list(o.shape) for o in response.outputs] == [[2, 4], [2, 4]]


def test_requested_output_subset(client: triton.InferenceServerClient) -> None:
    outputs = [triton.InferRequestedOutput("OUTPUT1")]
    result = client.infer("add_sub", add_sub_inputs(A, B), outputs=outputs)
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def sample(datatype: str) -> np.ndarray:
    """Two rows of values that probe the edges of each datatype."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        items = [b"", b"plain", "h\u00e9llo \u2713".encode(), b"a\0b", b"x" * 300, b"end"]
        return np.array(items, dtype=np.object_).reshape(2, 3)
    dtype = np.dtype(triton.triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max - 1, info.min + 2]
    else:
        info_f = np.finfo(dtype)
        values = [info_f.min, info_f.max, 0.0, -1.5, float(info_f.tiny), 3.140625]
    return np.array(values, dtype=dtype).reshape(2, 3)


@pytest.mark.parametrize("datatype", list(IDENTITY_MODELS))
def test_every_datatype_round_trips_raw(
    client: triton.InferenceServerClient, datatype: str
) -> None:
    data = sample(datatype)
    tensor = triton.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    result = client.infer(IDENTITY_MODELS[datatype], [tensor])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BYTES":
        assert got.ravel().tolist() == data.ravel().tolist()
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


TYPED = [d for d in IDENTITY_MODELS if d in CONTENTS_FIELD]


@pytest.mark.parametrize("datatype", TYPED)
def test_every_datatype_round_trips_typed(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str
) -> None:
    data = sample(datatype)
    request = service_pb2.ModelInferRequest(model_name=IDENTITY_MODELS[datatype], id="typed")
    item = request.inputs.add(name="INPUT0", datatype=datatype, shape=data.shape)
    field = CONTENTS_FIELD[datatype]
    getattr(item.contents, field).extend(data.ravel().tolist())
    response = stub.ModelInfer(request, timeout=10)
    assert not response.raw_output_contents  # asked in typed contents: answered in kind
    (out,) = response.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUTPUT0", datatype, [2, 3])
    assert list(getattr(out.contents, field)) == data.ravel().tolist()
    assert response.id == "typed"


def test_fp16_travels_raw_even_for_a_typed_request(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: triton.InferenceServerClient
) -> None:
    data = np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)
    tensor = triton.InferInput("INPUT0", [1, 3], "FP16")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_fp16", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert result.as_numpy("OUTPUT0").dtype == np.float16

    request = service_pb2.ModelInferRequest(model_name="identity_fp16")
    request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(
        1.0
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in caught.value.details()


def test_typed_add_sub_with_parameters(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub", model_version="1")
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        item = request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        item.contents.fp32_contents.extend(array.ravel().tolist())
    request.outputs.add(name="OUTPUT0")
    response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == ["OUTPUT0"]
    got = np.array(response.outputs[0].contents.fp32_contents, np.float32).reshape(2, 4)
    np.testing.assert_array_equal(got, A + B)


def test_bytes_tensors(client: triton.InferenceServerClient) -> None:
    # Valid UTF-8 only: ONNX Runtime holds strings as text (runtimes/onnx.py).
    data = np.array([["caf\u00e9".encode(), b""], ["\u2603".encode(), b"longer " * 50]], np.object_)
    tensor = triton.InferInput("INPUT0", [2, 2], "BYTES")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_bytes", [tensor])
    assert result.as_numpy("OUTPUT0").tolist() == data.tolist()


# -- errors -------------------------------------------------------------------------------


def test_unknown_model_and_version_are_not_found(client: triton.InferenceServerClient) -> None:
    err = error_of(client.infer, "no_such_model", add_sub_inputs(A, B))
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in err.message()
    err = error_of(client.infer, "add_sub", add_sub_inputs(A, B), model_version="3")
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "version 3" in err.message()
    assert error_of(client.get_model_metadata, "no_such_model").status() == "StatusCode.NOT_FOUND"
    assert error_of(client.get_model_config, "add_sub", "3").status() == "StatusCode.NOT_FOUND"


def test_bad_requests_are_invalid_argument(client: triton.InferenceServerClient) -> None:
    a = np.ones((2, 3), dtype=np.float32)
    err = error_of(client.infer, "add_sub", add_sub_inputs(a, a))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in err.message() and "[2, 3]" in err.message()
    big = np.ones((9, 4), dtype=np.float32)
    err = error_of(client.infer, "add_sub", add_sub_inputs(big, big))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "max_batch_size" in err.message()
    err = error_of(client.infer, "add_sub", add_sub_inputs(A, B)[:1])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT1" in err.message()
    wrong = triton.InferInput("INPUT0", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.ones((1, 4)))
    err = error_of(client.infer, "add_sub", [wrong, add_sub_inputs(A, B)[1]])
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "FP64" in err.message()
    outputs = [triton.InferRequestedOutput("OUTPUT9")]
    err = error_of(client.infer, "add_sub", add_sub_inputs(A, B), outputs=outputs)
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "OUTPUT9" in err.message()
    assert client.is_server_live()


def test_raw_size_mismatch(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 12 bytes" in caught.value.details()


def test_broken_model_is_unavailable(client: triton.InferenceServerClient) -> None:
    err = error_of(client.infer, "broken", add_sub_inputs(A, B))
    assert err.status() == "StatusCode.UNAVAILABLE"
    assert "max_batch_sise" in err.message()


def test_unoffered_rpcs_are_unimplemented(client: triton.InferenceServerClient) -> None:
    """CUDA shared memory (system shared memory is served: tests/api/test_system_shared_memory.py)
    and trace settings, which modelport does not offer."""
    err = error_of(client.get_cuda_shared_memory_status)
    assert err.status() == "StatusCode.UNIMPLEMENTED"
    assert "CUDA shared memory is not supported" in err.message()
    err = error_of(client.get_trace_settings)
    assert err.status() == "StatusCode.UNIMPLEMENTED"


def test_overload_is_resource_exhausted(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """``slow`` runs one request at a time and queues two: a burst overflows it."""
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    calls = [stub.ModelInfer.future(request, timeout=20) for _ in range(8)]
    rejected: list[grpc.RpcError] = []
    for call in calls:
        try:
            call.result()
        except grpc.RpcError as exc:
            rejected.append(exc)
    assert rejected, "the slow model's queue never filled"
    assert len(rejected) < len(calls)
    for exc in rejected:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in exc.details()
        assert ("retry-after", "1") in tuple(exc.trailing_metadata())


# -- streaming ----------------------------------------------------------------------------


def test_stream_answers_in_order_and_survives_an_error(
    client: triton.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        rng = np.random.default_rng(3)
        sent = []
        for i in range(12):
            if i == 5:
                client.async_stream_infer("no_such_model", add_sub_inputs(A, B), request_id="bad")
                continue
            a = rng.standard_normal((1 + i % 3, 4)).astype(np.float32)
            b = rng.standard_normal(a.shape).astype(np.float32)
            sent.append((str(i), a, b))
            client.async_stream_infer("add_sub", add_sub_inputs(a, b), request_id=str(i))
        got = [answers.get(timeout=10) for _ in range(12)]
    finally:
        client.stop_stream()
    errors = [error for result, error in got if error is not None]
    assert len(errors) == 1 and "no_such_model" in errors[0].message()
    results = [result for result, error in got if error is None]
    assert [r.get_response().id for r in results] == [i for i, _, _ in sent]
    for result, (_, a, b) in zip(results, sent, strict=True):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


# -- routing by model-id ------------------------------------------------------------------


def test_model_id_metadata_wins_over_the_model_name(client: triton.InferenceServerClient) -> None:
    route = {"model-id": "add_sub"}
    result = client.infer("mlp", add_sub_inputs(A, B), headers=route)
    assert result.get_response().model_name == "add_sub"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    result = client.infer("", add_sub_inputs(A, B), headers=route)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert client.get_model_metadata("mlp", headers=route).name == "add_sub"
    assert client.get_model_config("mlp", headers=route).config.name == "add_sub"
    assert client.is_model_ready("no_such_model", headers=route)
    stats = client.get_inference_statistics("mlp", headers=route).model_stats
    assert [s.name for s in stats] == ["add_sub"]
    err = error_of(client.infer, "add_sub", add_sub_inputs(A, B), headers={"model-id": "nope"})
    assert err.status() == "StatusCode.NOT_FOUND"
    assert "nope" in err.message()
    # Without the metadata, the name decides as usual.
    assert client.get_model_metadata("mlp").name == "mlp"


def test_model_id_routes_a_stream(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)),
        headers={"model-id": "add_sub"},
    )
    try:
        client.async_stream_infer("whatever", add_sub_inputs(A, B), request_id="r")
        result, error = answers.get(timeout=10)
    finally:
        client.stop_stream()
    assert error is None
    assert result.get_response().model_name == "add_sub"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


# -- repository and statistics ------------------------------------------------------------


def test_repository_index(client: triton.InferenceServerClient) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert {"add_sub", "mlp", "slow", "broken", *IDENTITY_MODELS.values()} == set(index)
    assert (index["add_sub"].version, index["add_sub"].state) == ("1", "READY")
    assert index["broken"].state == "UNAVAILABLE"
    assert "max_batch_sise" in index["broken"].reason


def test_repository_index_ready_only(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """tritonclient cannot ask for the ready models only; the protocol can."""
    found = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10)
    names = {m.name for m in found.models}
    assert "add_sub" in names and "broken" not in names


def test_statistics_count_the_inferences(client: triton.InferenceServerClient) -> None:
    def stats() -> Any:
        (found,) = client.get_inference_statistics("mlp").model_stats
        assert (found.name, found.version) == ("mlp", "1")
        return found

    before = stats()
    data = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    tensor = triton.InferInput("INPUT0", [3, 16], "FP32")
    tensor.set_data_from_numpy(data)
    for _ in range(4):
        assert client.infer("mlp", [tensor]).as_numpy("OUTPUT0").shape == (3, 10)
    bad = triton.InferInput("INPUT0", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    error_of(client.infer, "mlp", [bad])
    after = stats()
    assert after.inference_count - before.inference_count == 12
    assert after.execution_count - before.execution_count == 4
    ok_before, ok_after = before.inference_stats, after.inference_stats
    assert ok_after.success.count - ok_before.success.count == 4
    assert ok_after.fail.count - ok_before.fail.count == 1
    assert ok_after.success.ns > ok_before.success.ns
    assert after.last_inference >= before.last_inference
    assert after.last_inference > 0
    assert any(b.batch_size == 3 for b in after.batch_stats)
    every = client.get_inference_statistics().model_stats
    assert {"add_sub", "mlp"} <= {s.name for s in every}
    err = error_of(client.get_inference_statistics, "no_such_model")
    assert err.status() == "StatusCode.NOT_FOUND"


def test_unload_and_load(own_grpc_server: Any) -> None:
    with triton.InferenceServerClient(own_grpc_server.target) as client:
        client.unload_model("add_sub")
        assert not client.is_model_ready("add_sub")
        err = error_of(client.infer, "add_sub", add_sub_inputs(A, B))
        assert err.status() == "StatusCode.UNAVAILABLE"
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["add_sub"].state == "UNAVAILABLE"
        assert client.is_model_ready("mlp")  # the others keep serving

        client.load_model("add_sub")
        assert client.is_model_ready("add_sub")
        result = client.infer("add_sub", add_sub_inputs(A, B))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)

        err = error_of(client.load_model, "broken")
        assert err.status() == "StatusCode.INVALID_ARGUMENT"
        assert "max_batch_sise" in err.message()
        assert error_of(client.load_model, "no_such_model").status() == "StatusCode.NOT_FOUND"
        assert error_of(client.unload_model, "no_such_model").status() == "StatusCode.NOT_FOUND"
        err = error_of(client.load_model, "add_sub", config='{"max_batch_size": 2}')
        assert err.status() == "StatusCode.UNIMPLEMENTED"
    assert own_grpc_server.process.stop() == 0


def test_concurrent_requests_each_get_their_own_rows(client: triton.InferenceServerClient) -> None:
    rng = np.random.default_rng(1)
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    sent = []
    for i in range(24):
        a = rng.standard_normal((1 + i % 3, 4)).astype(np.float32)
        b = rng.standard_normal(a.shape).astype(np.float32)
        sent.append((a, b))
        client.async_infer(
            "add_sub",
            add_sub_inputs(a, b),
            callback=lambda result, error, i=i: answers.put((i, result, error)),
        )
    for _ in sent:
        i, result, error = answers.get(timeout=10)
        assert error is None
        a, b = sent[i]
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
