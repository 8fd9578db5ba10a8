"""The native transport's defences against clients that hold on to the server without
doing honest work, with the server in this test's event loop (so its connection state
can be read) and a raw HTTP/2 client (``raw_h2.py``) on a thread:

- rapid reset (CVE-2023-44487): streams reset as fast as they open keep their place
  among the connection's 256 until the work they started has stopped;
- a PING flood whose answers are never read: the server stops reading at its
  high-water mark, and answers every PING once the client reads;
- a connection that never sends the HTTP/2 preface, and one left idle, are closed;
- TCP keepalive is on, so a client that vanished with a stream open is found out.

``tests/api/grpc/test_native_transport.py`` covers the same with a server process and
real clients: cancelled requests never computed, clients connecting again after an
idle close."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from modelport.api.grpc import native
from modelport.api.grpc.call import FastDone
from modelport.api.grpc.h2 import H2Connection
from modelport.api.grpc.h2_flow import KEEPALIVE_IDLE_S, MAX_STREAMS, WRITE_HIGH
from modelport.api.grpc.native import NativeGrpcServer
from modelport.errors import ModelUnavailable
from support.raw_h2 import (
    ACK,
    CANCEL,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    RawH2,
    frame,
    grpc_message,
)  # fmt: skip

pytestmark = pytest.mark.timeout(60)

PATH = "/test.Held/Call"
REFUSED_STREAM = 7


@dataclass
class Held:
    """The fast method's calls, held until the test answers them: work in progress."""

    calls: list[tuple[asyncio.Future[Any], FastDone]]

    def start(self, raw: bytes, context: Any, done: FastDone) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append((future, done))
        return future


@dataclass
class Served:
    server: NativeGrpcServer
    target: str
    held: Held

    def connection(self) -> H2Connection:
        (conn,) = self.server.connections
        return conn


async def _serve(max_idle_s: float = 0.0) -> Served:
    server = NativeGrpcServer(max_message_bytes=1 << 20, max_idle_s=max_idle_s)
    held = Held([])
    server.handlers[PATH] = grpc.unary_unary_rpc_method_handler(
        lambda request, context: request,
        request_deserializer=None,
        response_serializer=lambda answer: answer,
    )
    server.fast[PATH] = held.start
    listening = await asyncio.get_running_loop().create_server(server.connection, "127.0.0.1", 0)
    server.servers.append(listening)
    port = listening.sockets[0].getsockname()[1]
    return Served(server, f"127.0.0.1:{port}", held)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    started = await _serve()
    yield started
    await started.server.stop(0)


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_reset_streams_keep_their_place_while_their_work_runs(served: Served) -> None:
    """256 calls opened and reset at once: their work is cancelled but still held, so the
    next stream is refused (REFUSED_STREAM, which gRPC clients retry); once one piece of
    work stops, the connection takes a call again and answers it."""
    with RawH2(served.target) as conn:
        await _rapid_reset(served, conn)


async def _rapid_reset(served: Served, conn: RawH2) -> None:
    await asyncio.to_thread(conn.start)
    body = grpc_message(b"request")
    burst = b""
    for stream in range(1, 2 * MAX_STREAMS + 1, 2):
        burst += frame(HEADERS, END_HEADERS, stream, conn.request_headers(path=PATH))
        burst += frame(DATA, END_STREAM, stream, body)
        burst += frame(RST_STREAM, 0, stream, CANCEL.to_bytes(4, "big"))
    conn.next_stream = 2 * MAX_STREAMS + 1
    await asyncio.to_thread(conn.send, burst)
    await _until(lambda: served.connection().orphans == MAX_STREAMS)
    assert len(served.held.calls) == MAX_STREAMS
    assert all(future.cancelled() for future, _ in served.held.calls)

    refused = await asyncio.to_thread(conn.open, path=PATH)
    answer = await asyncio.to_thread(conn.answer, refused)
    assert answer.reset and answer.reset_code == REFUSED_STREAM
    assert len(served.held.calls) == MAX_STREAMS  # nothing was started for it

    _, done = served.held.calls[0]
    done(ModelUnavailable("cancelled"))  # one piece of held work stops
    assert served.connection().orphans == MAX_STREAMS - 1
    stream = await asyncio.to_thread(conn.open, path=PATH)
    await asyncio.to_thread(conn.send, frame(DATA, END_STREAM, stream, body))
    await _until(lambda: len(served.held.calls) == MAX_STREAMS + 1)
    future, done = served.held.calls[-1]
    assert not future.cancelled()
    done(b"answer")
    answer = await asyncio.to_thread(conn.answer, stream)
    assert answer.status == 0 and answer.data == grpc_message(b"answer")


async def test_a_ping_flood_left_unread_stops_being_read(served: Served) -> None:
    """A client sends PINGs and never reads the ACKs: once WRITE_HIGH bytes wait, the
    server stops reading it (what it buffers stays bounded); when the client reads,
    the server reads again and every PING gets its ACK."""
    with socket.socket() as sock:
        await _flood(served, sock)


async def _flood(served: Served, sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    host, port = served.target.rsplit(":", 1)
    sock.connect((host, int(port)))
    pings = 3 * WRITE_HIGH // 17  # 17 bytes a PING, and as much for its ACK
    flood = PREFACE + frame(SETTINGS, 0, 0) + frame(PING, 0, 0, b"12345678") * pings
    sender = asyncio.ensure_future(asyncio.to_thread(sock.sendall, flood))
    await _until(lambda: bool(served.server.connections) and served.connection().paused)
    conn = served.connection()
    transport = conn.transport
    assert transport is not None
    assert transport.get_write_buffer_size() < 2 * WRITE_HIGH

    def read_acks() -> int:
        sock.settimeout(10)
        data = bytearray()
        expected = 9 + 9 + 17 * pings  # the server's SETTINGS, its WINDOW_UPDATE, ACKs
        while len(data) < expected + 9:  # + the ACK of our SETTINGS
            chunk = sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            data += chunk
        return data.count(frame(PING, ACK, 0, b"12345678"))

    assert await asyncio.to_thread(read_acks) == pings
    await sender
    assert not conn.paused


async def test_a_connection_without_the_preface_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native, "PREFACE_S", 0.3)
    served = await _serve()
    try:
        host, port = served.target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(PREFACE[:10])  # a start, and then nothing
            started = time.monotonic()
            assert await asyncio.to_thread(sock.recv, 1024) == b""  # closed, and silent
            assert time.monotonic() - started < 5
        await _until(lambda: not served.server.connections)
    finally:
        await served.server.stop(0)


async def test_an_idle_connection_gets_goaway_and_a_busy_one_does_not() -> None:
    served = await _serve(max_idle_s=0.3)
    try:
        with RawH2(served.target) as idle, RawH2(served.target) as busy:
            await asyncio.to_thread(idle.start)
            await asyncio.to_thread(busy.start)
            stream = await asyncio.to_thread(busy.open, path=PATH)  # a call in progress
            body = frame(DATA, END_STREAM, stream, grpc_message(b""))
            await asyncio.to_thread(busy.send, body)
            frames = await asyncio.to_thread(idle.frames, 3.0)
            assert idle.closed
            (goaway,) = [f for f in frames if f.kind == GOAWAY]
            assert int.from_bytes(goaway.payload[4:8], "big") == 0  # NO_ERROR
            assert len(served.server.connections) == 1  # the busy one stays
            _, done = served.held.calls[0]
            done(b"late")
            answer = await asyncio.to_thread(busy.answer, stream)
            assert answer.status == 0 and answer.data == grpc_message(b"late")
            await asyncio.to_thread(busy.frames, 3.0)  # idle now: closed in turn
            assert busy.closed
    finally:
        await served.server.stop(0)


async def test_connections_have_tcp_keepalive(served: Served) -> None:
    """The kernel's keepalive timer runs on the server's side of a connection (ss shows
    it), at KEEPALIVE_IDLE_S: a silent peer is probed, and dropped when it never answers."""
    port = int(served.target.rsplit(":", 1)[1])
    with RawH2(served.target) as conn:
        await asyncio.to_thread(conn.start)
        await _until(lambda: bool(served.server.connections) and served.connection().preface_seen)
        shown = subprocess.run(
            ["ss", "-Htno", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    assert "timer:(keepalive," in shown, shown
    left = shown.split("timer:(keepalive,", 1)[1].split(",", 1)[0]  # "1min" or "59sec"
    assert KEEPALIVE_IDLE_S == 60 and re.fullmatch(r"1min|[45]\dsec", left), shown
