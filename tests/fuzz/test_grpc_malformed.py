"""Malformed protobufs to the real gRPC server: random bytes, valid requests with bytes
flipped or cut off, and well-formed messages with nonsense in them, sent raw (identity
serializers) to the KServe v2 ``ModelInfer`` and TF Serving's ``Predict``. Each call is
answered with a status meant for a bad request, never UNKNOWN or INTERNAL, and the
server keeps serving. The cases tried are printed (``pytest -s``)."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.protos import grpc_service_pb2 as pb
from modelport.protos.tensorflow.core.framework import tensor_pb2, types_pb2
from modelport.protos.tensorflow_serving.apis import predict_pb2

V2_INFER = "/inference.GRPCInferenceService/ModelInfer"
TFS_PREDICT = "/tensorflow.serving.PredictionService/Predict"
# What a bad request may be answered with; UNKNOWN and INTERNAL mean the server broke.
BAD_REQUEST_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def channel(server_factory: Any) -> Any:
    port = free_port()
    server_factory(grpc_port=port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan


def _v2_request() -> bytes:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    message = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        message.raw_input_contents.append(a.tobytes())
    return message.SerializeToString()


def _tfs_request() -> bytes:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "add_sub"
    for name in ("INPUT0", "INPUT1"):
        tensor = message.inputs[name]
        tensor.dtype = types_pb2.DT_FLOAT
        tensor.tensor_shape.dim.add(size=1)
        tensor.tensor_shape.dim.add(size=4)
        tensor.float_val.extend([1, 2, 3, 4])
    return message.SerializeToString()


def _mutated(valid: bytes) -> Any:
    flips = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)), max_size=4)
    return st.builds(_apply, st.just(valid), flips, st.integers(0, len(valid)))


def _apply(valid: bytes, flips: list[tuple[int, int]], keep: int) -> bytes:
    data = bytearray(valid)
    for index, mask in flips:
        data[index] ^= mask
    return bytes(data[: max(keep, 1)])


dims = st.lists(st.integers(-3, 2**40), max_size=4)


@st.composite
def odd_v2_requests(draw: st.DrawFn) -> bytes:
    message = pb.ModelInferRequest(model_name=draw(st.sampled_from(["add_sub", "mlp", "", "x"])))
    for _ in range(draw(st.integers(0, 3))):
        tensor = message.inputs.add(
            name=draw(st.sampled_from(["INPUT0", "INPUT1", "", "x"])),
            datatype=draw(st.sampled_from(["FP32", "BYTES", "FP16", "INT8", "BOOL", "?"])),
            shape=draw(dims),
        )
        if draw(st.booleans()):
            message.raw_input_contents.append(draw(st.binary(max_size=40)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1),
                                                              max_size=4)))  # fmt: skip
    return message.SerializeToString()


@st.composite
def odd_tfs_requests(draw: st.DrawFn) -> bytes:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = draw(st.sampled_from(["add_sub", "mlp", "", "x"]))
    message.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "x"]))
    for name in draw(st.lists(st.sampled_from(["INPUT0", "INPUT1", "x"]), max_size=3)):
        tensor: tensor_pb2.TensorProto = message.inputs[name]
        tensor.dtype = draw(st.sampled_from([1, 2, 3, 7, 9, 10, 19, 0, 99]))
        for size in draw(dims):
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.unknown_rank = draw(st.booleans())
        tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=3)))
        tensor.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3)))
        tensor.tensor_content = draw(st.binary(max_size=24))
    return message.SerializeToString()


def _fuzz(channel: Any, method: str, requests: Any) -> dict[str, int]:
    call = channel.unary_unary(method)  # no serializers: raw bytes both ways
    codes: dict[str, int] = {}

    @FUZZ
    @given(raw=requests)
    def run(raw: bytes) -> None:
        try:
            call(raw, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert code in BAD_REQUEST_CODES, f"{code}: {exc.details()} for {raw!r}"
        codes[code.name] = codes.get(code.name, 0) + 1

    run()
    return codes


@pytest.mark.parametrize(
    ("method", "valid", "odd"),
    [(V2_INFER, _v2_request(), odd_v2_requests()),
     (TFS_PREDICT, _tfs_request(), odd_tfs_requests())],
    ids=["v2-ModelInfer", "tfserving-Predict"],
)  # fmt: skip
@pytest.mark.timeout(300)
def test_malformed_messages_get_a_bad_request_status(
    channel: Any, method: str, valid: bytes, odd: Any
) -> None:
    channel.unary_unary(method)(valid, timeout=10)  # the unmutated request is served
    codes = _fuzz(channel, method, st.binary(max_size=200) | _mutated(valid) | odd)
    total = sum(codes.values())
    print(f"\n{method}: {total} cases, by status: {codes}")
    assert total >= 300
    assert channel.unary_unary(method)(valid, timeout=10)  # and still is
