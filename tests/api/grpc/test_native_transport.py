"""The native gRPC transport (``api/grpc/h2.py``, ``native.py``) against a real server
process: what a plain HTTP/1.1 client gets, large messages through HTTP/2 flow
control, compressed requests, more calls at once than the streams one connection may
open, calls cancelled mid-flight, raw frames no gRPC client writes, h2load, calls
reset as fast as they open (never computed), and idle connections closed (clients
connect again). After each test the server still answers and its log has no
traceback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from support.builders import write_slow_model
from support.raw_h2 import (
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    RST_STREAM,
    RawH2,
    frame,
    grpc_message,
)  # fmt: skip

ENHANCE_YOUR_CALM = 11  # HTTP/2 error code

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def server(grpc_server_factory: Any) -> Iterator[Any]:
    """This module's own server (the native transport, the default), so its log holds
    only what these tests did."""
    started = grpc_server_factory()
    yield started
    started.process.stop()


def assert_serving(server: Any) -> None:
    """A normal call still succeeds and nothing raised inside the server."""
    with triton.InferenceServerClient(server.target) as client:
        assert client.is_server_live()
        a = np.arange(4, dtype=np.float32).reshape(1, 4)
        result = client.infer("add_sub", add_sub_inputs(a, a))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    log = server.process.log()
    assert "Traceback" not in log, log


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[triton.InferInput]:
    return [tensor("INPUT0", a, "FP32"), tensor("INPUT1", b, "FP32")]


def add_sub_request(a: np.ndarray, b: np.ndarray) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return bytes(request.SerializeToString())


def test_http1_request_is_told_the_port_speaks_grpc(server: Any) -> None:
    """An HTTP/1.1 request on the gRPC port gets a 400 naming the protocol, not a hang
    or a reset; gRPC goes on being served."""
    host, port = server.target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"this port speaks gRPC" in answer
    assert_serving(server)


def test_large_messages_both_ways(server: Any) -> None:
    """16 MiB up and back: frames split at the peers' max frame size, windows opened by
    WINDOW_UPDATE as the bytes are taken; then four 6 MiB calls at once on one channel,
    more than the 16 MiB connection window, so they wait on the connection's window too."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((1, 4 * 1024 * 1024)).astype(np.float32)  # 16 MiB
    with triton.InferenceServerClient(server.target) as client:
        result = client.infer("identity_fp32", [tensor("INPUT0", big, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), big)

    arrays = [rng.standard_normal((1, 1536 * 1024)).astype(np.float32) for _ in range(4)]

    async def together() -> list[Any]:
        client = triton_aio.InferenceServerClient(server.target)
        try:
            return await asyncio.gather(
                *(client.infer("identity_fp32", [tensor("INPUT0", a, "FP32")]) for a in arrays)
            )
        finally:
            await client.close()

    for array, answer in zip(arrays, asyncio.run(together()), strict=True):
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), array)
    assert_serving(server)
    # A message over grpc_max_message_bytes (RESOURCE_EXHAUSTED) is tested in
    # test_grpc_server.py::test_message_size_and_concurrency_limits and fuzz/test_limits.


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_answer_as_plain_ones(server: Any, algorithm: str) -> None:
    """tritonclient compressing its requests gets the answers of uncompressed ones."""
    a = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    b = np.full((8, 4), 0.25, np.float32)
    ramp = np.tile(np.arange(256, dtype=np.float32), 256).reshape(1, -1)  # compresses well
    with triton.InferenceServerClient(server.target) as client:
        for model, inputs, outputs in [
            ("add_sub", lambda: add_sub_inputs(a, b), ("OUTPUT0", "OUTPUT1")),
            ("identity_fp32", lambda: [tensor("INPUT0", ramp, "FP32")], ("OUTPUT0",)),
        ]:
            plain = client.infer(model, inputs())
            packed = client.infer(model, inputs(), compression_algorithm=algorithm)
            for name in outputs:
                np.testing.assert_array_equal(packed.as_numpy(name), plain.as_numpy(name))
    assert_serving(server)


def test_more_calls_at_once_than_streams_per_connection(server: Any) -> None:
    """300 calls at once on one channel, past the 256 streams the server lets one
    connection open: the client queues the rest, and every call gets its own answer."""
    rows = [np.full((1, 4), float(i), np.float32) for i in range(300)]
    one = np.ones((1, 4), np.float32)

    async def burst() -> list[Any]:
        client = triton_aio.InferenceServerClient(server.target)
        try:
            return await asyncio.gather(
                *(client.infer("add_sub", add_sub_inputs(row, one), request_id=str(i))
                  for i, row in enumerate(rows))
            )  # fmt: skip
        finally:
            await client.close()

    results = asyncio.run(burst())
    for i, (row, result) in enumerate(zip(rows, results, strict=True)):
        assert result.get_response().id == str(i)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), row + one)
    assert_serving(server)


def test_cancelled_calls_leave_the_server_serving(server: Any) -> None:
    """Calls given up mid-flight: aio tasks cancelled while the slow model (150 ms a
    call) holds them, sync calls past their deadline, and a raw stream reset after half
    its message; the slow model then answers again and the server serves on."""
    slow = np.ones((1, 2), np.float32)
    a = np.ones((1, 4), np.float32)

    async def cancel_some() -> None:
        client = triton_aio.InferenceServerClient(server.target)
        try:
            tasks = [
                asyncio.ensure_future(client.infer("slow", [tensor("INPUT0", slow, "FP32")]))
                for _ in range(3)
            ] + [asyncio.ensure_future(client.infer("add_sub", add_sub_inputs(a, a)))]
            await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.close()

    asyncio.run(cancel_some())
    with triton.InferenceServerClient(server.target) as client:
        for _ in range(3):
            with pytest.raises(InferenceServerException) as caught:
                client.infer("slow", [tensor("INPUT0", slow, "FP32")], client_timeout=0.02)
            assert caught.value.status() in (
                "StatusCode.DEADLINE_EXCEEDED",
                "StatusCode.RESOURCE_EXHAUSTED",  # the slow model's queue of 2 was full
            )
    with RawH2(server.target) as conn:
        conn.start()
        stream = conn.open()
        half = grpc_message(add_sub_request(a, a))[:20]
        conn.send(frame(DATA, 0, stream, half) + frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4)))
        answer = conn.call(add_sub_request(a, a))  # the same connection goes on
        assert answer.status == 0, answer.headers
    with triton.InferenceServerClient(server.target) as client:
        answer = slow_when_free(client, slow)
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), slow)
    assert_serving(server)


def slow_when_free(client: triton.InferenceServerClient, row: np.ndarray) -> Any:
    """The slow model's answer, once the calls cancelled above have left its queue."""
    for _ in range(50):
        try:
            return client.infer("slow", [tensor("INPUT0", row, "FP32")], client_timeout=10)
        except InferenceServerException as exc:
            if exc.status() != "StatusCode.RESOURCE_EXHAUSTED":
                raise
        time.sleep(0.1)
    raise AssertionError("the slow model never took a call again")


def add_sub_successes(base: str) -> float:
    body = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("modelport_requests_total{")
        and 'model="add_sub"' in line
        and 'outcome="success"' in line
    )


def test_h2load_calls_all_succeed(server: Any, tmp_path: Path) -> None:
    """h2load (nghttp2's HTTP/2 load tool, as bench/grpc_run.py drives it) posts 200
    framed ModelInfer calls over 4 connections, 10 streams each at a time: all 200
    succeed, by h2load's count and by the server's own (h2load cannot read trailers)."""
    a = np.ones((1, 4), np.float32)
    body = tmp_path / "request.bin"
    body.write_bytes(grpc_message(add_sub_request(a, a)))
    before = add_sub_successes(server.url)
    url = f"http://{server.target}/inference.GRPCInferenceService/ModelInfer"
    done = subprocess.run(
        ["h2load", url, "-n", "200", "-c", "4", "-m", "10", "-t", "1", "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "200 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout
    assert add_sub_successes(server.url) - before == 200
    assert_serving(server)


@pytest.mark.parametrize("continued", [False, True], ids=["one frame", "continuation"])
def test_a_header_block_over_64_kib_closes_the_connection(server: Any, continued: bool) -> None:
    """Metadata past 64 KiB (one HEADERS frame, or HEADERS + CONTINUATION) ends that
    connection with GOAWAY ENHANCE_YOUR_CALM; other clients are served as before."""
    with RawH2(server.target) as conn:
        conn.start()
        block = conn.request_headers(padding="x" * 150_000)  # ~90 KiB once Huffman-coded
        assert len(block) > 64 * 1024
        if continued:
            half = len(block) // 2
            first, rest = block[:half], block[half:]
            conn.send(frame(HEADERS, 0, 1, first) + frame(CONTINUATION, END_HEADERS, 1, rest))
        else:
            conn.send(frame(HEADERS, END_HEADERS, 1, block))
        frames = conn.frames(quiet=2.0)
        assert conn.closed
    (goaway,) = [f for f in frames if f.kind == GOAWAY]
    assert int.from_bytes(goaway.payload[4:8], "big") == ENHANCE_YOUR_CALM
    assert b"64 KiB" in goaway.payload[8:]
    assert_serving(server)


@pytest.fixture(scope="module")
def patient_server(grpc_server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose ``patient`` model takes 100 ms a request and queues up to 1,000,
    and which closes gRPC connections idle for half a second."""
    repo = tmp_path_factory.mktemp("patient-repo")
    write_slow_model(repo, "patient", delay_ms=100, max_queue_size=1000)
    started = grpc_server_factory(env={"MODELPORT_GRPC_MAX_IDLE_S": "0.5"}, repo=repo)
    yield started
    started.process.stop()


def patient_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="patient")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    return bytes(request.SerializeToString())


def test_calls_reset_at_once_are_never_computed(patient_server: Any) -> None:
    """Rapid reset: 200 calls opened and reset in one burst would queue 20 s of work on
    the patient model; the server drops each from the queue as its stream is reset, so
    the model computes at most the one it had started, and the connection and the
    model go on serving."""
    with RawH2(patient_server.target) as conn:
        conn.start()
        body = grpc_message(patient_request())
        burst = b""
        for stream in range(1, 401, 2):
            burst += frame(HEADERS, END_HEADERS, stream, conn.request_headers())
            burst += frame(DATA, END_STREAM, stream, body)
            burst += frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big"))
        conn.next_stream = 401
        conn.send(burst)
        answer = conn.call(patient_request())  # the same connection takes calls at once
        assert answer.status == 0, answer.headers
    time.sleep(1.0)  # ten requests' worth of time: had they been kept, some would run
    with triton.InferenceServerClient(patient_server.target) as client:
        (stats,) = client.get_inference_statistics("patient").model_stats
        assert stats.inference_count <= 2, stats  # the call above, and one begun at most
        assert stats.inference_stats.fail.count >= 199, stats  # cancelled, and counted
    assert "Traceback" not in patient_server.process.log()


def grpc_connections(port: int) -> int:
    """Client sockets connected to ``port`` on this machine (ss, from iproute2)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return len(out.splitlines())


def test_idle_connections_are_closed_and_clients_connect_again(patient_server: Any) -> None:
    """With grpc_max_idle_s = 0.5, tritonclient's connection is closed after a quiet
    second (GOAWAY), and the same client object's next call connects again and works."""
    port = int(patient_server.target.rsplit(":", 1)[1])
    row = np.ones((1, 2), np.float32)
    with triton.InferenceServerClient(patient_server.target) as client:
        assert client.infer("patient", [tensor("INPUT0", row, "FP32")])
        assert grpc_connections(port) == 1
        deadline = time.monotonic() + 10
        while grpc_connections(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert grpc_connections(port) == 0
        answer = client.infer("patient", [tensor("INPUT0", row, "FP32")])
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), row)


def test_a_call_past_its_grpc_timeout_ends_and_is_not_computed(patient_server: Any) -> None:
    """A call whose grpc-timeout passes while it waits behind another ends with
    DEADLINE_EXCEEDED (as grpcio's server ends it) even if its client never resets it,
    and its request is dropped from the queue."""
    with triton.InferenceServerClient(patient_server.target) as client:
        (before,) = client.get_inference_statistics("patient").model_stats
    with RawH2(patient_server.target) as conn:
        conn.start()
        first = conn.open()  # no timeout: runs for 100 ms
        conn.send(frame(DATA, END_STREAM, first, grpc_message(patient_request())))
        late = conn.call(patient_request(), grpc_timeout="30m")
        assert late.status == 4, late.headers  # DEADLINE_EXCEEDED
        assert late.headers[-1]["grpc-message"] == "Deadline Exceeded"
        assert conn.answer(first).status == 0
    time.sleep(0.3)
    with triton.InferenceServerClient(patient_server.target) as client:
        (after,) = client.get_inference_statistics("patient").model_stats
    assert after.inference_count - before.inference_count == 1
