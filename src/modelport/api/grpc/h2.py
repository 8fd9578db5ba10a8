"""HTTP/2 (RFC 9113), the server side, as much of it as gRPC uses: the native transport.

:class:`H2Connection` is an ``asyncio.Protocol`` that parses frames, keeps the
connection's and each stream's flow-control windows, and hands each new request
stream to a :class:`StreamHandler` made by the ``opener`` it was given (the gRPC layer,
``api/grpc/native.py``). It knows nothing of gRPC.

Sending: a handler calls :meth:`H2Connection.send` with a header block, data and/or a
trailer block; they leave at once as far as the peer's windows allow (in one
``write`` with anything else this turn produced), and the rest waits for its
WINDOW_UPDATE. Receiving: the connection window is given back as data arrives; a
stream's window only as its handler reports the bytes consumed, so a handler that
stops consuming holds its client back (a streamed call's backpressure).

Not supported, by design: server push, priorities (ignored), HTTP/1.1 upgrade (a
plain HTTP/1.1 request is answered 400 naming the port's protocol), CONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from modelport.api.grpc.hpack_codec import HeaderDecoder, HpackError

log = logging.getLogger("modelport.grpc")

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

_ID = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits), type, flags, stream id
_SETTING = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")
HTTP1_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
HTTP1_TEXT = b"this port speaks gRPC (HTTP/2); send HTTP/1.1 requests to the HTTP port\n"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


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
        "handler", "id", "local_closed", "out", "recv_window", "remote_closed", "send_window"
    )  # fmt: skip

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.handler: StreamHandler | None = None
        self.remote_closed = False
        self.local_closed = False
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW  # what the client may still send
        # Waiting for window: [kind, payload, end]; headers only wait behind data.
        self.out: deque[tuple[int, bytes, bool]] = deque()


Opener = Callable[["H2Connection", Stream, list[tuple[bytes, bytes]]], StreamHandler]


class ConnectionError_(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class H2Connection(asyncio.Protocol):
    def __init__(self, opener: Opener, on_close: Callable[[H2Connection], None]) -> None:
        self.opener = opener
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.decoder = HeaderDecoder()
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_stream_window = DEFAULT_WINDOW
        self.peer_frame_size = DEFAULT_FRAME_SIZE
        self.received_unacked = 0
        self.going_away = False
        self.peer = ""
        self._buffer = bytearray()
        self.preface_seen = False
        self._continuing: tuple[int, bytearray, bool] | None = None
        self._frames: list[bytes] = []
        self._receiving = False
        self._blocked: dict[int, Stream] = {}
        self._drained: dict[int, asyncio.Future[None]] = {}
        self._unacked: dict[int, int] = {}
        # Streams reset before their handler finished, whose work still runs. They count
        # against MAX_STREAMS until it stops, so resetting streams as fast as they are
        # opened (CVE-2023-44487, "rapid reset") cannot start unbounded work.
        self.orphans = 0
        self.paused = False  # reading stopped: the peer is not reading what we send
        self.opened_at = self.idle_since = time.monotonic()

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]
        _keep_alive(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"ipv{6 if ':' in str(peer[0]) else 4}:{peer[0]}:{peer[1]}"
        settings = b"".join(
            _SETTING.pack(key, value)
            for key, value in (
                (S_MAX_STREAMS, MAX_STREAMS),
                (S_WINDOW, STREAM_WINDOW),
                (S_FRAME_SIZE, MAX_FRAME_SIZE),
                (S_HEADER_LIST, MAX_HEADER_BLOCK),
            )
        )
        self._frames.append(frame(SETTINGS, 0, 0, settings))
        opening = _ID.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)
        # Sent once the client's preface is seen (_flush): an HTTP/1.1 client must get
        # its 400 answer alone, not after these frames.
        self._frames.append(frame(WINDOW_UPDATE, 0, 0, opening))

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.handler is not None:
                stream.handler.reset()
        for waiter in self._drained.values():
            if not waiter.done():
                waiter.set_result(None)
        self._drained.clear()
        self.transport = None
        self.on_close(self)

    def pause_writing(self) -> None:
        # The peer leaves what we send unread (a flood of PINGs or SETTINGS whose answers
        # it never reads, or a slow reader): stop reading it until it catches up.
        if self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        self._receiving = True
        try:
            if not self.preface_seen and not self._read_preface():
                return
            self._read_frames()
        except ConnectionError_ as exc:
            self.close(exc.code, str(exc))
        finally:
            self._receiving = False
            self._flush()

    # -- sending (the handlers' side) ------------------------------------------------------

    def send(
        self,
        stream: Stream,
        headers: bytes | None = None,
        data: bytes | None = None,
        trailers: bytes | None = None,
    ) -> None:
        """Queue what the stream answers; ``trailers`` end it (END_STREAM)."""
        if stream.local_closed or self.transport is None:
            return
        size = 0 if data is None else len(data)
        room = min(self.send_window, stream.send_window, self.peer_frame_size)
        if not stream.out and size <= room:  # the usual answer: all of it leaves now
            self._send_now(stream, headers, data, trailers)
            return
        out = stream.out
        if headers is not None:
            out.append((HEADERS, headers, False))
        if data is not None:
            out.append((DATA, data, False))
        if trailers is not None:
            out.append((HEADERS, trailers, True))
        self._send_queued(stream)
        if not self._receiving:
            self._flush()

    def _send_now(
        self, stream: Stream, headers: bytes | None, data: bytes | None, trailers: bytes | None
    ) -> None:
        if headers is not None:
            self._emit_headers(stream.id, headers, False)
        if data is not None:
            self._frames.append(frame(DATA, 0, stream.id, data))
            self.send_window -= len(data)
            stream.send_window -= len(data)
        if trailers is not None:
            self._emit_headers(stream.id, trailers, True)
            self._ended_locally(stream)
        if not self._receiving:
            self._flush()

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

    def reset(self, stream: Stream, code: int) -> None:
        """End the stream now (RST_STREAM), dropping what it had not sent."""
        if self.streams.pop(stream.id, None) is None:
            return
        stream.local_closed = stream.remote_closed = True
        stream.out.clear()
        self._forget(stream)
        self._frames.append(frame(RST_STREAM, 0, stream.id, _ID.pack(code)))
        if not self._receiving:
            self._flush()

    def consumed(self, stream: Stream, size: int) -> None:
        """The handler has taken ``size`` bytes of the stream's data: open its window."""
        if stream.remote_closed or size <= 0:
            return
        unacked = self._unacked.get(stream.id, 0) + size
        if unacked >= STREAM_WINDOW // 2:
            self._frames.append(frame(WINDOW_UPDATE, 0, stream.id, _ID.pack(unacked)))
            stream.recv_window += unacked
            unacked = 0
            if not self._receiving:
                self._flush()
        self._unacked[stream.id] = unacked

    def close(self, code: int = NO_ERROR, reason: str = "") -> None:
        """GOAWAY, then close: every stream not yet answered is dropped."""
        if self.transport is None:
            return
        if code != NO_ERROR:
            log.info("closing gRPC connection from %s: %s", self.peer, reason)
        debug = reason.encode()[:200]
        self._frames.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream, code) + debug))
        self._flush()
        self.transport.close()

    def go_away(self) -> None:
        """Refuse new streams (GOAWAY, NO_ERROR); close once the open ones are done."""
        if self.going_away or self.transport is None:
            return
        self.going_away = True
        self._frames.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream, NO_ERROR)))
        self._flush()
        if not self.streams:
            self.transport.close()

    def _flush(self) -> None:
        if self._frames and self.transport is not None and self.preface_seen:
            frames, self._frames = self._frames, []
            self.transport.write(b"".join(frames))

    def _send_queued(self, stream: Stream) -> None:
        out = stream.out
        while out:
            kind, payload, end = out[0]
            if kind == HEADERS:
                out.popleft()
                self._emit_headers(stream.id, payload, end)
                if end:
                    self._ended_locally(stream)
                continue
            room = min(self.send_window, stream.send_window, self.peer_frame_size)
            if payload and room <= 0:
                break
            chunk, rest = payload[:room], payload[room:]
            flags = END_STREAM if end and not rest else 0
            self._frames.append(frame(DATA, flags, stream.id, chunk))
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
            if rest:
                out[0] = (DATA, rest, end)
            else:
                out.popleft()
                if end:
                    self._ended_locally(stream)
        if out:
            self._blocked[stream.id] = stream
        else:
            self._blocked.pop(stream.id, None)
            waiter = self._drained.pop(stream.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _emit_headers(self, stream_id: int, block: bytes, end: bool) -> None:
        size = self.peer_frame_size
        first, rest = block[:size], block[size:]
        flags = (END_STREAM if end else 0) | (0 if rest else END_HEADERS)
        self._frames.append(frame(HEADERS, flags, stream_id, first))
        while rest:
            piece, rest = rest[:size], rest[size:]
            self._frames.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, piece))

    def _ended_locally(self, stream: Stream) -> None:
        stream.local_closed = True
        stream.out.clear()
        if not stream.remote_closed:
            # Answered before the client finished sending: it need not send the rest.
            self._frames.append(frame(RST_STREAM, 0, stream.id, _ID.pack(NO_ERROR)))
        self.streams.pop(stream.id, None)
        self._forget(stream)
        if self.going_away and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def _abandon(self, stream: Stream) -> None:
        if stream.handler is not None and stream.handler.reset():
            self.orphans += 1

    def orphan_done(self) -> None:
        """A reset stream's handler has stopped its work (see :meth:`StreamHandler.reset`)."""
        self.orphans = max(0, self.orphans - 1)

    def _forget(self, stream: Stream) -> None:
        """``stream`` has left ``streams``: drop what was kept for it."""
        if not self.streams:
            self.idle_since = time.monotonic()
        self._blocked.pop(stream.id, None)
        self._unacked.pop(stream.id, None)
        waiter = self._drained.pop(stream.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- receiving -------------------------------------------------------------------------

    def _read_preface(self) -> bool:
        buffer = self._buffer
        if len(buffer) < len(PREFACE):
            if not PREFACE.startswith(bytes(buffer)):
                self._not_http2()
            return False
        if buffer[: len(PREFACE)] != PREFACE:
            self._not_http2()
            return False
        del buffer[: len(PREFACE)]
        self.preface_seen = True
        return True

    def _not_http2(self) -> None:
        assert self.transport is not None
        self.transport.write(HTTP1_ANSWER % (len(HTTP1_TEXT), HTTP1_TEXT))
        self.transport.close()
        self._buffer.clear()

    def _read_frames(self) -> None:
        buffer = self._buffer
        pos, size = 0, len(buffer)
        try:
            while size - pos >= 9 and self.transport is not None:
                length = (buffer[pos] << 16) | (buffer[pos + 1] << 8) | buffer[pos + 2]
                if length > MAX_FRAME_SIZE:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if size - pos - 9 < length:
                    break
                kind, flags = buffer[pos + 3], buffer[pos + 4]
                stream_id = _ID.unpack_from(buffer, pos + 5)[0] & 0x7FFFFFFF
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id, payload)
        finally:
            del buffer[:pos]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise ConnectionError_(FRAME_SIZE_ERROR, "a PING is 8 bytes on stream 0")
            if not flags & ACK:
                self._frames.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._on_reset(stream_id, payload)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "a client cannot push")
        # PRIORITY and unknown kinds are ignored, as the protocol allows

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        self.received_unacked += len(payload)
        if self.received_unacked >= CONNECTION_WINDOW // 2:
            self._frames.append(frame(WINDOW_UPDATE, 0, 0, _ID.pack(self.received_unacked)))
            self.received_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream already answered or reset: its late data is dropped
        stream.recv_window -= len(payload)
        if stream.recv_window < 0:  # sent past its window: its handler is not keeping up
            self.reset(stream, FLOW_CONTROL_ERROR)
            self._abandon(stream)
            return
        padding = 0
        if flags & PADDED:
            payload, padding = _unpad(payload)
        end = bool(flags & END_STREAM)
        if padding:
            self.consumed(stream, padding + 1)
        if end:
            stream.remote_closed = True
        if stream.handler is not None:
            stream.handler.data(payload, end)
        if end and stream.local_closed:
            self.streams.pop(stream_id, None)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & PADDED:
            payload, _ = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._headers_done(stream_id, payload, bool(flags & END_STREAM))
        else:
            self._continuing = (stream_id, bytearray(payload), bool(flags & END_STREAM))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._continuing[1]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & END_HEADERS:
            end = self._continuing[2]
            self._continuing = None
            self._headers_done(stream_id, bytes(block), end)

    def _headers_done(self, stream_id: int, block: bytes, end: bool) -> None:
        try:
            headers = self.decoder.decode(block)
        except HpackError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, str(exc)) from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they end its side
            if not end:
                raise ConnectionError_(PROTOCOL_ERROR, "trailers without END_STREAM")
            stream.remote_closed = True
            if stream.handler is not None:
                stream.handler.data(b"", True)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        self.last_stream = stream_id
        if self.going_away or len(self.streams) + self.orphans >= MAX_STREAMS:
            self._frames.append(frame(RST_STREAM, 0, stream_id, _ID.pack(REFUSED_STREAM)))
            return
        stream = Stream(stream_id, self.peer_stream_window)
        self.streams[stream_id] = stream
        stream.handler = self.opener(self, stream, headers)
        if end and not stream.remote_closed:
            stream.remote_closed = True
            stream.handler.data(b"", True)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "a WINDOW_UPDATE is 4 bytes")
        increment = _ID.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "the window grew past 2^31-1")
            for blocked in list(self._blocked.values()):
                self._send_queued(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a closed stream's late update
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            self.reset(stream, PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR)
            self._abandon(stream)
            return
        stream.send_window += increment
        if stream.out:
            self._send_queued(stream)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == S_WINDOW:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window past 2^31-1")
                delta = value - self.peer_stream_window
                self.peer_stream_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value < 1 << 24:
                    raise ConnectionError_(PROTOCOL_ERROR, f"max frame size {value}")
                self.peer_frame_size = value
        self._frames.append(frame(SETTINGS, ACK, 0))
        for stream in list(self._blocked.values()):
            self._send_queued(stream)

    def _on_reset(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4 or stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "a bad RST_STREAM")
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            if stream_id > self.last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        stream.local_closed = stream.remote_closed = True
        stream.out.clear()
        self._forget(stream)
        self._abandon(stream)
        if self.going_away and not self.streams and self.transport is not None:
            self.transport.close()


def _unpad(payload: bytes) -> tuple[bytes, int]:
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    padding = payload[0]
    return payload[1 : len(payload) - padding], padding


def _keep_alive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # the TCP_KEEP* options are Linux's
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
