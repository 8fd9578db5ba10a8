"""HTTP/2 (RFC 9113) below the connection: the wire's numbers, a frame's bytes, a
stream's state, and the :class:`Outbox` that sends within the peer's windows.

``h2.py``'s :class:`~modelport.api.grpc.h2.H2Connection` reads frames and keeps the
streams; what it and its stream handlers send goes through its ``Outbox``: frames are
gathered and leave in one ``write`` per turn, and a stream's data that the peer's
connection or stream window cannot take yet waits there for its WINDOW_UPDATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
S_TABLE_SIZE, S_PUSH, S_MAX_STREAMS, S_WINDOW, S_FRAME_SIZE, S_HEADER_LIST = range(1, 7)

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
# What this server advertises.
STREAM_WINDOW = 1 << 20  # bytes a stream may send ahead of its handler
CONNECTION_WINDOW = 1 << 24
MAX_FRAME_SIZE = 1 << 20
MAX_STREAMS = 256  # streams open at once on one connection
MAX_HEADER_BLOCK = 64 * 1024
# Past WRITE_HIGH bytes not yet taken by the peer, the connection stops reading it.
WRITE_HIGH, WRITE_LOW = 4 << 20, 1 << 20
# TCP keepalive: a peer silent for KEEPALIVE_IDLE_S is probed every KEEPALIVE_INTERVAL_S,
# and after KEEPALIVE_PROBES unanswered probes the kernel ends the connection: a client
# that vanished (power cut, network gone) with a stream open does not hold it forever.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 10, 6

ID = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits), type, flags, stream id
SETTING_STRUCT = struct.Struct(">HI")
GOAWAY_STRUCT = struct.Struct(">II")
SERVER_SETTINGS = b"".join(
    SETTING_STRUCT.pack(key, value)
    for key, value in (
        (S_MAX_STREAMS, MAX_STREAMS),
        (S_WINDOW, STREAM_WINDOW),
        (S_FRAME_SIZE, MAX_FRAME_SIZE),
        (S_HEADER_LIST, MAX_HEADER_BLOCK),
    )
)
HTTP1_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
HTTP1_TEXT = b"this port speaks gRPC (HTTP/2); send HTTP/1.1 requests to the HTTP port\n"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


class H2ProtocolError(Exception):
    """The peer broke the protocol: a connection error (RFC 9113, 5.4.1), answered with
    GOAWAY carrying ``code`` and the connection closed."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def unpad(payload: bytes) -> tuple[bytes, int]:
    """A PADDED frame's payload without its padding, and the padding's length."""
    if not payload or payload[0] >= len(payload):
        raise H2ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
    padding = payload[0]
    return payload[1 : len(payload) - padding], padding


class StreamHandler(Protocol):
    """What the connection calls for one request stream (the gRPC call)."""

    def data(self, payload: bytes, end: bool) -> None: ...

    def reset(self) -> bool:
        """The stream ended without an answer: reset (by the client, or for breaking
        flow control), or the connection is gone. Nothing more can be sent on it.

        True if work it started still runs: it then calls
        :meth:`H2Connection.orphan_done` once that work has stopped."""


class Stream:
    __slots__ = (
        "handler",
        "id",
        "local_closed",
        "out",
        "recv_window",
        "remote_closed",
        "send_window",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.handler: StreamHandler | None = None
        self.remote_closed = False
        self.local_closed = False
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW  # what the client may still send
        # Waiting for window: [kind, payload, end]; headers only wait behind data.
        self.out: deque[tuple[int, bytes, bool]] = deque()


class Outbox:
    """The frames a connection sends, and the peer's windows that hold data back.

    Frames leave at :meth:`flush`: at once, or, while ``holding`` (the connection is
    parsing what it read), together at the end of that read. Nothing leaves before
    ``open`` (the client's preface seen: an HTTP/1.1 client gets its 400 alone).
    ``ended`` is called when a stream's trailers have been queued (its side is done).
    """

    def __init__(self, ended: Callable[[Stream], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.holding = False
        self.window = DEFAULT_WINDOW  # what the peer takes on the whole connection
        self.stream_window = DEFAULT_WINDOW  # a new stream's window (SETTINGS)
        self.frame_size = DEFAULT_FRAME_SIZE  # the largest frame the peer takes
        self._ended = ended
        self._frames: list[bytes] = []
        self._blocked: dict[int, Stream] = {}
        self._drained: dict[int, asyncio.Future[None]] = {}

    def add(self, data: bytes) -> None:
        """Queue a frame (built with :func:`frame`) to leave at the next flush."""
        self._frames.append(data)

    def flush(self) -> None:
        if self._frames and self.transport is not None and self.open:
            frames, self._frames = self._frames, []
            self.transport.write(b"".join(frames))

    def flush_soon(self) -> None:
        """Flush now, unless a read is being parsed (its end flushes)."""
        if not self.holding:
            self.flush()

    def send(
        self,
        stream: Stream,
        *,
        headers: bytes | None = None,
        data: bytes | None = None,
        trailers: bytes | None = None,
    ) -> None:
        """Queue what the stream answers; ``trailers`` end it (END_STREAM)."""
        if stream.local_closed or self.transport is None:
            return
        size = 0 if data is None else len(data)
        room = min(self.window, stream.send_window, self.frame_size)
        if not stream.out and size <= room:  # the usual answer: all of it leaves now
            if headers is not None:
                self._headers(stream.id, headers, False)
            if data is not None:
                self._frames.append(frame(DATA, 0, stream.id, data))
                self.window -= size
                stream.send_window -= size
            if trailers is not None:
                self._headers(stream.id, trailers, True)
                self._ended(stream)
        else:
            out = stream.out
            if headers is not None:
                out.append((HEADERS, headers, False))
            if data is not None:
                out.append((DATA, data, False))
            if trailers is not None:
                out.append((HEADERS, trailers, True))
            self.send_queued(stream)
        self.flush_soon()

    def blocked(self, stream: Stream) -> bool:
        return bool(stream.out)

    async def drained(self, stream: Stream) -> None:
        """Wait until what ``stream`` sent has left (or the connection is gone)."""
        if not stream.out or self.transport is None:
            return
        waiter = self._drained.get(stream.id)
        if waiter is None:
            waiter = self._drained[stream.id] = asyncio.get_running_loop().create_future()
        await waiter

    def send_queued(self, stream: Stream) -> None:
        """Send what ``stream`` has waiting, as far as the windows allow."""
        out = stream.out
        while out:
            kind, payload, end = out[0]
            if kind == HEADERS:
                out.popleft()
                self._headers(stream.id, payload, end)
                if end:
                    self._ended(stream)
                continue
            room = min(self.window, stream.send_window, self.frame_size)
            if payload and room <= 0:
                break
            chunk, rest = payload[:room], payload[room:]
            flags = END_STREAM if end and not rest else 0
            self._frames.append(frame(DATA, flags, stream.id, chunk))
            self.window -= len(chunk)
            stream.send_window -= len(chunk)
            if rest:
                out[0] = (DATA, rest, end)
            else:
                out.popleft()
                if end:
                    self._ended(stream)
        if out:
            self._blocked[stream.id] = stream
        else:
            self._blocked.pop(stream.id, None)
            self._wake(stream.id)

    def send_blocked(self) -> None:
        """A window grew: send what every blocked stream has waiting."""
        for stream in list(self._blocked.values()):
            self.send_queued(stream)

    def forget(self, stream: Stream) -> None:
        """``stream`` is gone: drop what waited for it, and wake its drain waiter."""
        stream.out.clear()
        self._blocked.pop(stream.id, None)
        self._wake(stream.id)

    def close(self) -> None:
        """The connection is gone: wake every drain waiter."""
        self.transport = None
        for waiter in self._drained.values():
            if not waiter.done():
                waiter.set_result(None)
        self._drained.clear()

    def _wake(self, stream_id: int) -> None:
        waiter = self._drained.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers(self, stream_id: int, block: bytes, end: bool) -> None:
        size = self.frame_size
        first, rest = block[:size], block[size:]
        flags = (END_STREAM if end else 0) | (0 if rest else END_HEADERS)
        self._frames.append(frame(HEADERS, flags, stream_id, first))
        while rest:
            piece, rest = rest[:size], rest[size:]
            self._frames.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, piece))


class Inbox:
    """The windows of what the connection receives: the connection's is given back as
    data arrives, a stream's only as its handler consumes the data (backpressure)."""

    def __init__(self, out: Outbox) -> None:
        self._out = out
        self._received = 0  # bytes on the connection not yet given back
        self._unacked: dict[int, int] = {}  # the same per stream

    def received(self, size: int) -> None:
        self._received += size
        if self._received >= CONNECTION_WINDOW // 2:
            self._out.add(frame(WINDOW_UPDATE, 0, 0, ID.pack(self._received)))
            self._received = 0

    def consumed(self, stream: Stream, size: int) -> None:
        if stream.remote_closed or size <= 0:
            return
        unacked = self._unacked.get(stream.id, 0) + size
        if unacked >= STREAM_WINDOW // 2:
            self._out.add(frame(WINDOW_UPDATE, 0, stream.id, ID.pack(unacked)))
            stream.recv_window += unacked
            unacked = 0
            self._out.flush_soon()
        self._unacked[stream.id] = unacked

    def forget(self, stream: Stream) -> None:
        self._unacked.pop(stream.id, None)


def keep_alive(sock: socket.socket | None) -> None:
    """TCP keepalive on the connection's socket (see KEEPALIVE_IDLE_S)."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # the TCP_KEEP* options are Linux's
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
