"""Random HTTP/2 frames to the native gRPC transport (``api/grpc/h2.py``): after the
client preface and a SETTINGS frame, a few frames of any type (0-10, unknown ones
included) with random flags, stream ids and payloads: gRPC request headers with odd
fields, broken header blocks, DATA on idle streams, window updates that overflow, bad
settings, bytes that are not a frame at all. Whatever the server answers (frames, a
GOAWAY, a closed connection), afterwards a normal call on another connection succeeds
and the server's log has no traceback. The examples tried are printed (``pytest -s``)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.raw_h2 import (
    CONTINUATION,
    DATA,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    RawH2,
    frame,
    grpc_message,
)

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
A = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture(scope="module")
def server(server_factory: Any) -> Iterator[tuple[Any, str]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = server_factory(grpc_port=port)
    yield process, f"127.0.0.1:{port}"
    process.stop()


@pytest.fixture(scope="module")
def client(server: tuple[Any, str]) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server[1]) as c:
        yield c


text = st.binary(max_size=24) | st.sampled_from([b"", b"0", b"gzip", b"application/grpc"])
odd_field = st.tuples(
    st.sampled_from(
        [b":method", b":path", b":scheme", b"content-type", b"grpc-timeout", b"grpc-encoding",
         b"te", b"x-meta-bin", b"model-id", b"", b":unknown", b"authorization"]
    ) | st.binary(max_size=12),
    text | st.sampled_from([b"1S", b"99999999999999999999H", b"\xb2S", b"-1m", b"5n", b"=", b"a"]),
)  # fmt: skip
# What a frame carries: bytes, or something built when the frame is sent.
Payload = tuple[str, Any]
raw_bytes = st.tuples(st.just("bytes"), st.binary(max_size=48))
request_headers = st.tuples(st.just("request headers"), st.lists(odd_field, max_size=4))
bad_block = st.tuples(st.just("header block"), st.binary(min_size=1, max_size=24))
message = st.tuples(st.just("message"), st.booleans())
window = st.tuples(st.just("window"), st.sampled_from([0, 1, 65_535, 2**31 - 1]))
settings_list = st.tuples(
    st.just("settings"),
    st.lists(st.tuples(st.integers(0, 8), st.sampled_from([0, 1, 16_383, 2**24, 2**31])),
             max_size=3),
)  # fmt: skip
FLAGS = st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x2D]) | st.integers(0, 255)
STREAMS = st.sampled_from([0, 1, 1, 3, 5, 2, 2**31 - 1]) | st.integers(0, 2**31 - 1)
OPEN_STREAMS = st.sampled_from([1, 3, 5, 7])
END_FLAGS = st.sampled_from([0, 0x1])
# Frames shaped as their type expects (so the server reads past the first one), with
# odd values: HEADERS opening calls, DATA, window updates, settings, resets, pings.
shaped = st.one_of(
    st.tuples(st.just(HEADERS), st.sampled_from([0x4, 0x5, 0x0, 0x24]), OPEN_STREAMS,
              request_headers | bad_block),
    st.tuples(st.just(DATA), END_FLAGS, OPEN_STREAMS | STREAMS, message),
    st.tuples(st.just(WINDOW_UPDATE), st.just(0), st.sampled_from([0, 1, 3, 9]), window),
    st.tuples(st.just(SETTINGS), st.sampled_from([0, 0, 0x1]), st.just(0), settings_list),
    st.tuples(st.just(RST_STREAM), st.just(0), OPEN_STREAMS | STREAMS,
              st.tuples(st.just("window"), st.integers(0, 13))),
    st.tuples(st.just(PING), st.sampled_from([0, 0x1]), st.just(0),
              st.tuples(st.just("bytes"), st.binary(min_size=8, max_size=8))),
    st.tuples(st.sampled_from([PRIORITY, CONTINUATION, GOAWAY, 10]), FLAGS, OPEN_STREAMS,
              raw_bytes | request_headers),
)  # fmt: skip
any_frame = st.tuples(
    st.integers(0, 10), FLAGS, STREAMS,
    raw_bytes | request_headers | bad_block | message | window | settings_list,
)  # fmt: skip
# Bytes sent as they are: a frame header claiming more than the server takes, junk.
raw = st.sampled_from([b"\xff\xff\xff\x00\x00\x00\x00\x00\x01", b"\x00\x00\x01\x04"])
sequence = st.lists(
    st.one_of(
        *[st.tuples(st.just("frame"), shaped)] * 3,  # mostly frames read past
        st.tuples(st.just("frame"), any_frame),
        st.tuples(st.just("raw"), raw),
    ),
    min_size=1,
    max_size=8,
)


def build(conn: RawH2, spec: tuple[int, int, int, Payload]) -> bytes:
    kind, flags, stream_id, (what, arg) = spec
    if what == "bytes" or what == "header block":
        body = arg
    elif what == "request headers":
        body = bytes(conn.encoder.encode([*_request_fields(), *arg]))
    elif what == "message":
        request = b"\x0a\x07add_sub"  # ModelInferRequest(model_name="add_sub"), no inputs
        body = grpc_message(request)[: None if arg else 3]
    elif what == "window":
        body = struct.pack(">I", arg)
    else:
        body = b"".join(struct.pack(">HI", key, value) for key, value in arg)
    return frame(kind, flags, stream_id, body)


def _request_fields() -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
        (b"content-type", b"application/grpc"),
    ]


@FUZZ
@given(sequence)
def test_random_frames_leave_the_server_serving(
    server: tuple[Any, str], client: triton.InferenceServerClient, frames: list[Any]
) -> None:
    process, target = server
    print(frames)
    with RawH2(target) as conn:
        conn.start()
        for what, spec in frames:
            conn.send(build(conn, spec) if what == "frame" else spec)
        conn.frames(quiet=0.2)
    result = client.infer("add_sub", add_sub_inputs())
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + A)
    log = process.log()
    assert "Traceback" not in log, log


def add_sub_inputs() -> list[triton.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        item = triton.InferInput(name, list(A.shape), "FP32")
        item.set_data_from_numpy(A)
        inputs.append(item)
    return inputs


def test_the_odd_headers_each_get_a_status(server: tuple[Any, str]) -> None:
    """The request fields the fuzz found breaking the server, one by one: each call is
    answered with a gRPC status (no connection error, no traceback)."""
    process, target = server
    cases = [
        [(b"grpc-timeout", b"\xb2S")],  # a Unicode digit in latin-1
        [(b"grpc-timeout", b"9" * 400 + b"H")],  # past what a float holds
        [(b"x-meta-bin", b"a")],  # not base64
        [(b"", b"empty name")],
    ]
    with RawH2(target) as conn:
        conn.start()
        for extra in cases:
            stream = conn.next_stream
            conn.next_stream += 2
            block = bytes(conn.encoder.encode([*_request_fields(), *extra]))
            conn.send(frame(HEADERS, 0x5, stream, block))
            answer = conn.answer(stream)
            assert not answer.reset and answer.headers, extra
            assert "grpc-status" in answer.headers[-1], (extra, answer.headers)
    log = process.log()
    assert "Traceback" not in log, log
