"""HTTP/2 (RFC 9113), the server side, as much of it as gRPC uses: the native transport.

:class:`H2Connection` is an ``asyncio.Protocol`` that parses frames, keeps the streams
and the windows of what it receives, and hands each new request stream to a
:class:`StreamHandler` made by the ``opener`` it was given (the gRPC layer,
``api/grpc/native.py``). It knows nothing of gRPC. The frames' numbers, a stream's
state and the sending side (``Outbox``: one ``write`` per turn, data held back by the
peer's windows) are ``h2_flow.py``.

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
import logging
import time
from collections.abc import Callable

from modelport.api.grpc.h2_flow import (
    ACK,
    COMPRESSION_ERROR,
    CONNECTION_WINDOW,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    GOAWAY_STRUCT,
    HEADERS,
    HTTP1_ANSWER,
    HTTP1_TEXT,
    ID,
    MAX_FRAME_SIZE,
    MAX_HEADER_BLOCK,
    MAX_STREAMS,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    S_FRAME_SIZE,
    S_WINDOW,
    SERVER_SETTINGS,
    SETTING_STRUCT,
    SETTINGS,
    WINDOW_UPDATE,
    WRITE_HIGH,
    WRITE_LOW,
    H2ProtocolError,
    Inbox,
    Outbox,
    Stream,
    StreamHandler,
    frame,
    keep_alive,
    unpad,
)
from modelport.api.grpc.hpack_codec import HeaderDecoder, HpackError

log = logging.getLogger("modelport.grpc")

Opener = Callable[["H2Connection", Stream, list[tuple[bytes, bytes]]], StreamHandler]


class H2Connection(asyncio.Protocol):
    def __init__(self, opener: Opener, on_close: Callable[[H2Connection], None]) -> None:
        self.opener = opener
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.out = Outbox(self._ended_locally)
        self.inbox = Inbox(self.out)
        self.streams: dict[int, Stream] = {}
        self.decoder = HeaderDecoder()
        self.last_stream = 0
        self.going_away = False
        self.peer = ""
        self._buffer = bytearray()
        self._continuing: tuple[int, bytearray, bool] | None = None
        # Streams reset before their handler finished, whose work still runs. They count
        # against MAX_STREAMS until it stops, so resetting streams as fast as they are
        # opened (CVE-2023-44487, "rapid reset") cannot start unbounded work.
        self.orphans = 0
        self.paused = False  # reading stopped: the peer is not reading what we send
        self.opened_at = self.idle_since = time.monotonic()

    @property
    def preface_seen(self) -> bool:
        return self.out.open

    # -- asyncio ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.out.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]
        keep_alive(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"ipv{6 if ':' in str(peer[0]) else 4}:{peer[0]}:{peer[1]}"
        self.out.add(frame(SETTINGS, 0, 0, SERVER_SETTINGS))
        opening = ID.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)
        # Sent once the client's preface is seen (Outbox.open): an HTTP/1.1 client must
        # get its 400 answer alone, not after these frames.
        self.out.add(frame(WINDOW_UPDATE, 0, 0, opening))

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.handler is not None:
                stream.handler.reset()
        self.out.close()
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
        self.out.holding = True
        try:
            if not self.out.open and not self._read_preface():
                return
            self._read_frames()
        except H2ProtocolError as exc:
            self.close(exc.code, str(exc))
        finally:
            self.out.holding = False
            self.out.flush()

    # -- the handlers' side ----------------------------------------------------------------

    def send(
        self,
        stream: Stream,
        *,
        headers: bytes | None = None,
        data: bytes | None = None,
        trailers: bytes | None = None,
    ) -> None:
        """Queue what the stream answers; ``trailers`` end it (END_STREAM)."""
        self.out.send(stream, headers=headers, data=data, trailers=trailers)

    def blocked(self, stream: Stream) -> bool:
        return bool(stream.out)

    async def drained(self, stream: Stream) -> None:
        """Wait until what ``stream`` sent has left (or the connection is gone)."""
        await self.out.drained(stream)

    def reset(self, stream: Stream, code: int) -> None:
        """End the stream now (RST_STREAM), dropping what it had not sent."""
        if self.streams.pop(stream.id, None) is None:
            return
        stream.local_closed = stream.remote_closed = True
        self._forget(stream)
        self.out.add(frame(RST_STREAM, 0, stream.id, ID.pack(code)))
        self.out.flush_soon()

    def consumed(self, stream: Stream, size: int) -> None:
        """The handler has taken ``size`` bytes of the stream's data: open its window."""
        self.inbox.consumed(stream, size)

    def close(self, code: int = NO_ERROR, reason: str = "") -> None:
        """GOAWAY, then close: every stream not yet answered is dropped."""
        if self.transport is None:
            return
        if code != NO_ERROR:
            log.info("closing gRPC connection from %s: %s", self.peer, reason)
        debug = reason.encode()[:200]
        self.out.add(frame(GOAWAY, 0, 0, GOAWAY_STRUCT.pack(self.last_stream, code) + debug))
        self.out.flush()
        self.transport.close()

    def go_away(self) -> None:
        """Refuse new streams (GOAWAY, NO_ERROR); close once the open ones are done."""
        if self.going_away or self.transport is None:
            return
        self.going_away = True
        self.out.add(frame(GOAWAY, 0, 0, GOAWAY_STRUCT.pack(self.last_stream, NO_ERROR)))
        self.out.flush()
        if not self.streams:
            self.transport.close()

    def orphan_done(self) -> None:
        """A reset stream's handler has stopped its work (see :meth:`StreamHandler.reset`)."""
        self.orphans = max(0, self.orphans - 1)

    # -- a stream's end --------------------------------------------------------------------

    def _ended_locally(self, stream: Stream) -> None:
        stream.local_closed = True
        stream.out.clear()
        if not stream.remote_closed:
            # Answered before the client finished sending: it need not send the rest.
            self.out.add(frame(RST_STREAM, 0, stream.id, ID.pack(NO_ERROR)))
        self.streams.pop(stream.id, None)
        self._forget(stream)
        if self.going_away and not self.streams and self.transport is not None:
            self.out.flush()
            self.transport.close()

    def _abandon(self, stream: Stream) -> None:
        if stream.handler is not None and stream.handler.reset():
            self.orphans += 1

    def _forget(self, stream: Stream) -> None:
        """``stream`` has left ``streams``: drop what was kept for it."""
        if not self.streams:
            self.idle_since = time.monotonic()
        self.inbox.forget(stream)
        self.out.forget(stream)

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
        self.out.open = True
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
                    raise H2ProtocolError(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if size - pos - 9 < length:
                    break
                kind, flags = buffer[pos + 3], buffer[pos + 4]
                stream_id = ID.unpack_from(buffer, pos + 5)[0] & 0x7FFFFFFF
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id, payload)
        finally:
            del buffer[:pos]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != CONTINUATION:
            raise H2ProtocolError(PROTOCOL_ERROR, "a header block was interrupted")
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
                raise H2ProtocolError(FRAME_SIZE_ERROR, "a PING is 8 bytes on stream 0")
            if not flags & ACK:
                self.out.add(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            self._on_reset(stream_id, payload)
        elif kind == GOAWAY:
            self.going_away = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif kind == PUSH_PROMISE:
            raise H2ProtocolError(PROTOCOL_ERROR, "a client cannot push")
        # PRIORITY and unknown kinds are ignored, as the protocol allows

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        self.inbox.received(len(payload))
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.last_stream:
                raise H2ProtocolError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream already answered or reset: its late data is dropped
        stream.recv_window -= len(payload)
        if stream.recv_window < 0:  # sent past its window: its handler is not keeping up
            self.reset(stream, FLOW_CONTROL_ERROR)
            self._abandon(stream)
            return
        padding = 0
        if flags & PADDED:
            payload, padding = unpad(payload)
        end = bool(flags & END_STREAM)
        if padding:
            self.inbox.consumed(stream, padding + 1)
        if end:
            stream.remote_closed = True
        if stream.handler is not None:
            stream.handler.data(payload, end)
        if end and stream.local_closed:
            self.streams.pop(stream_id, None)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) > MAX_HEADER_BLOCK:
            raise H2ProtocolError(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & PADDED:
            payload, _ = unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._headers_done(stream_id, payload, bool(flags & END_STREAM))
        else:
            self._continuing = (stream_id, bytearray(payload), bool(flags & END_STREAM))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise H2ProtocolError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._continuing[1]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise H2ProtocolError(ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if flags & END_HEADERS:
            end = self._continuing[2]
            self._continuing = None
            self._headers_done(stream_id, bytes(block), end)

    def _headers_done(self, stream_id: int, block: bytes, end: bool) -> None:
        try:
            headers = self.decoder.decode(block)
        except HpackError as exc:
            raise H2ProtocolError(COMPRESSION_ERROR, str(exc)) from None
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they end its side
            if not end:
                raise H2ProtocolError(PROTOCOL_ERROR, "trailers without END_STREAM")
            stream.remote_closed = True
            if stream.handler is not None:
                stream.handler.data(b"", True)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream:
            raise H2ProtocolError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        self.last_stream = stream_id
        if self.going_away or len(self.streams) + self.orphans >= MAX_STREAMS:
            self.out.add(frame(RST_STREAM, 0, stream_id, ID.pack(REFUSED_STREAM)))
            return
        stream = Stream(stream_id, self.out.stream_window)
        self.streams[stream_id] = stream
        stream.handler = self.opener(self, stream, headers)
        if end and not stream.remote_closed:
            stream.remote_closed = True
            stream.handler.data(b"", True)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ProtocolError(FRAME_SIZE_ERROR, "a WINDOW_UPDATE is 4 bytes")
        increment = ID.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise H2ProtocolError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.out.window += increment
            if self.out.window > MAX_WINDOW:
                raise H2ProtocolError(FLOW_CONTROL_ERROR, "the window grew past 2^31-1")
            self.out.send_blocked()
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
            self.out.send_queued(stream)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise H2ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise H2ProtocolError(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for offset in range(0, len(payload), 6):
            key, value = SETTING_STRUCT.unpack_from(payload, offset)
            if key == S_WINDOW:
                if value > MAX_WINDOW:
                    raise H2ProtocolError(FLOW_CONTROL_ERROR, "initial window past 2^31-1")
                delta = value - self.out.stream_window
                self.out.stream_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value < 1 << 24:
                    raise H2ProtocolError(PROTOCOL_ERROR, f"max frame size {value}")
                self.out.frame_size = value
        self.out.add(frame(SETTINGS, ACK, 0))
        self.out.send_blocked()

    def _on_reset(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4 or stream_id == 0:
            raise H2ProtocolError(PROTOCOL_ERROR, "a bad RST_STREAM")
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            if stream_id > self.last_stream:
                raise H2ProtocolError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            return
        stream.local_closed = stream.remote_closed = True
        self._forget(stream)
        self._abandon(stream)
        if self.going_away and not self.streams and self.transport is not None:
            self.transport.close()
