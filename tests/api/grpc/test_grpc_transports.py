"""Both gRPC transports (``grpc_transport``: "native", the default, and "grpcio") serve
the same calls the same way: health, ModelInfer with raw and typed tensors, error
codes, and what a compressed message over ``grpc_max_message_bytes`` gets."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from support.raw_h2 import RawH2

pytestmark = pytest.mark.timeout(60)

LIMIT = 1024 * 1024  # grpc_max_message_bytes of these servers
A = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
B = np.array([[0.5, -0.5, 2.0, 0.0]], np.float32)


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(grpc_server_factory: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    started = grpc_server_factory(
        env={
            "MODELPORT_GRPC_TRANSPORT": request.param,
            "MODELPORT_GRPC_MAX_MESSAGE_BYTES": str(LIMIT),
        }
    )
    # The log names the transport: proof the setting took.
    listening = "gRPC (grpcio) listening" if request.param == "grpcio" else "gRPC listening"
    assert listening in started.process.log()
    yield started
    started.process.stop()


@pytest.fixture
def stub(server: Any) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_server_live_and_ready(stub: Any) -> None:
    assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
    ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="add_sub"), timeout=10)
    assert ready.ready


def add_sub_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(array.tobytes())
    return bytes(request.SerializeToString())


def test_model_infer_raw_tensors(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub", id="raw")
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(array.tobytes())
    reply = stub.ModelInfer(request, timeout=10)
    assert reply.id == "raw"
    outputs = {o.name: i for i, o in enumerate(reply.outputs)}
    sums = np.frombuffer(reply.raw_output_contents[outputs["OUTPUT0"]], np.float32)
    diffs = np.frombuffer(reply.raw_output_contents[outputs["OUTPUT1"]], np.float32)
    np.testing.assert_array_equal(sums, (A + B).ravel())
    np.testing.assert_array_equal(diffs, (A - B).ravel())


def test_model_infer_typed_tensors(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    reply = stub.ModelInfer(request, timeout=10)
    by_name = {o.name: i for i, o in enumerate(reply.outputs)}
    got = reply.raw_output_contents[by_name["OUTPUT0"]] if reply.raw_output_contents else None
    if got is not None:
        np.testing.assert_array_equal(np.frombuffer(got, np.float32), (A + B).ravel())
    else:
        output = reply.outputs[by_name["OUTPUT0"]]
        np.testing.assert_array_equal(output.contents.fp32_contents, (A + B).ravel())


@pytest.mark.parametrize(
    ("model", "inputs", "code"),
    [
        ("no_such_model", 2, grpc.StatusCode.NOT_FOUND),
        ("add_sub", 1, grpc.StatusCode.INVALID_ARGUMENT),  # INPUT1 missing
        ("broken", 2, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_errors_carry_the_same_codes(
    stub: Any, model: str, inputs: int, code: grpc.StatusCode
) -> None:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name in ("INPUT0", "INPUT1")[:inputs]:
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(A.tobytes())
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == code
    assert caught.value.details()


def test_unknown_method_is_unimplemented(server: Any) -> None:
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_compressed_message_inflating_past_the_limit(server: Any) -> None:
    """A small gzip message that inflates past grpc_max_message_bytes is refused with
    RESOURCE_EXHAUSTED by both transports, and the connection goes on."""
    request = service_pb2.ModelInferRequest(model_name="add_sub", id="x" * (2 * LIMIT))
    bomb = gzip.compress(request.SerializeToString())
    assert len(bomb) < LIMIT // 100
    with RawH2(server.target) as conn:
        conn.start()
        answer = conn.call(bomb, compressed=True, grpc_encoding="gzip")
        assert answer.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], answer.headers
        answer = conn.call(b"", path="/inference.GRPCInferenceService/ServerLive")
        assert answer.status == 0, answer.headers


def test_compressed_flag_on_the_wire(server: Any) -> None:
    """Messages sent with the compressed flag set, byte for byte: gzip and deflate are
    inflated; a flag without grpc-encoding, bytes that do not inflate or a cut-short
    stream are INTERNAL, never an UNKNOWN or a dropped connection."""
    request = add_sub_request()
    expected = (A + B).tobytes()
    with RawH2(server.target) as conn:
        conn.start()
        for encoding, packed in [
            ("gzip", gzip.compress(request)),
            ("deflate", zlib.compress(request)),
        ]:
            answer = conn.call(packed, compressed=True, grpc_encoding=encoding)
            assert answer.status == 0, answer.headers
            reply = service_pb2.ModelInferResponse.FromString(answer.data[5:])
            assert reply.raw_output_contents[0] == expected
        answer = conn.call(gzip.compress(request), compressed=True)
        assert answer.status == grpc.StatusCode.INTERNAL.value[0], answer.headers
        assert "encoding" in answer.headers[-1]["grpc-message"]
        for broken in (b"not gzip at all", gzip.compress(request)[:-12]):
            answer = conn.call(broken, compressed=True, grpc_encoding="gzip")
            assert answer.status == grpc.StatusCode.INTERNAL.value[0], answer.headers
        answer = conn.call(request, grpc_encoding="snappy")
        # UNIMPLEMENTED is gRPC's word for it (doc/compression.md), the native answer;
        # grpcio's core cannot parse the name and answers INTERNAL.
        unsupported = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL)
        assert answer.status in [code.value[0] for code in unsupported], answer.headers
