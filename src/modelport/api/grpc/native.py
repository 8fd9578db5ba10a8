"""gRPC over modelport's own HTTP/2 (``h2.py``): the default gRPC transport.

grpcio's server accepts about one call per turn of the event loop and spends most of
its time handing calls between its core's thread and the loop (``bench/README.md``:
~3,000 calls/s here whatever the handler does). This transport parses HTTP/2 on the
loop itself, so a call costs what its handler costs. It serves the same servicers
grpcio would: the generated ``add_*_to_server`` functions register their method
handlers with :class:`NativeGrpcServer` as with a ``grpc.aio.Server``, interceptors
(API keys, malformed requests) wrap them once at start, and each call gets a
:class:`CallContext` with the part of ``grpc.aio.ServicerContext`` the servicers use.

What a call's headers say and how its messages and trailers are written is
``wire.py``.

``grpc_transport = "grpcio"`` in the settings serves the same services with
grpcio's server instead (``server.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from modelport.api.grpc.errors import RETRY_AFTER, STATUS
from modelport.api.grpc.h2 import H2Connection
from modelport.api.grpc.h2_flow import PROTOCOL_ERROR, Stream
from modelport.api.grpc.hpack_codec import HeaderList, encode_literal
from modelport.api.grpc.wire import (
    BARE_HEAD,
    HEAD,
    OK_TRAILERS,
    InflatedTooLarge,
    Metadata,
    deadline_of,
    inflate,
    metadata_block,
    percent_encoded,
    read_head,
)
from modelport.errors import ModelportError, Overloaded, TooManyRequests
from modelport.security.access import Grant

log = logging.getLogger("modelport.grpc")

PREFACE_S = 10.0  # a connection must start speaking HTTP/2 within this


class AbortCall(Exception):
    """Raised by :meth:`CallContext.abort`: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """The servicer's view of one call (the ``grpc.aio.ServicerContext`` it uses)."""

    __slots__ = ("_call", "_deadline", "_metadata", "_peer", "code_", "details_", "trailing")

    def __init__(self, metadata: Metadata, deadline: float | None, peer: str, call: Call) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._peer = peer
        self._call = call
        self.trailing: Metadata = ()
        self.code_: grpc.StatusCode | None = None
        self.details_ = ""

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise AbortCall(code, details)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailing = tuple(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.ended


FastDone = Callable[[bytes | BaseException], None]
# A unary method answered without a task: given the request's bytes and the context, it
# calls ``done`` with the serialized answer or the error, now or from a callback. It
# returns the future of the work it queued (cancelled if the client gives up), or None.
FastUnary = Callable[[bytes, Any, FastDone], "asyncio.Future[Any] | None"]
Admit = Callable[[Metadata], Grant]


class NativeGrpcServer:
    """The method table, the limits, and the connections of one gRPC port.

    ``fast`` methods skip the interceptors, so ``admit`` checks their API key.
    """

    def __init__(
        self,
        max_message_bytes: int,
        max_concurrent_rpcs: int = 0,
        admit: Admit | None = None,
        max_idle_s: float = 0.0,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.admit = admit
        self.max_idle_s = max_idle_s
        self._sweeper: asyncio.Task[None] | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.fast: dict[str, FastUnary] = {}
        self.connections: set[H2Connection] = set()
        self.calls: set[Call] = set()
        self.servers: list[asyncio.Server] = []

    # What the generated add_*_to_server functions call.
    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # they also register each method by name, below

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler

    async def intercept(self, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:
        """Wrap every method's handler in ``interceptors`` (the first outermost), once."""
        for path, handler in list(self.handlers.items()):
            self.handlers[path] = await _intercepted(path, handler, list(interceptors))

    def connection(self) -> H2Connection:
        """The protocol factory to give ``loop.create_server``."""
        conn = H2Connection(self.open, self.connections.discard)
        self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return conn

    async def _sweep(self) -> None:
        """Close connections that hold a socket for nothing: no HTTP/2 preface within
        PREFACE_S of connecting, or no call for ``max_idle_s`` (GOAWAY, NO_ERROR: gRPC
        clients connect again when they next call)."""
        every = min(1.0, self.max_idle_s / 4) if self.max_idle_s else 1.0
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for conn in list(self.connections):
                if not conn.preface_seen:
                    if now - conn.opened_at > PREFACE_S:
                        conn.close(PROTOCOL_ERROR, "no HTTP/2 preface")
                elif (
                    self.max_idle_s
                    and not conn.streams
                    and not conn.orphans
                    and now - conn.idle_since > self.max_idle_s
                ):
                    conn.go_away()

    def open(self, conn: H2Connection, stream: Stream, headers: list[tuple[bytes, bytes]]) -> Call:
        return Call(self, conn, stream, headers)

    async def stop(self, grace: float | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.go_away()
        deadline = time.monotonic() + (grace or 0.0)
        while self.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for call in list(self.calls):
            call.cancel()
        for conn in list(self.connections):
            conn.close()
        for server in self.servers:
            await server.wait_closed()


async def _intercepted(
    path: str, handler: grpc.RpcMethodHandler, interceptors: list[grpc.aio.ServerInterceptor]
) -> grpc.RpcMethodHandler:
    details = _Details(path, ())
    if not interceptors:
        return handler
    first, rest = interceptors[0], interceptors[1:]

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return await _intercepted(path, handler, rest)

    return await first.intercept_service(continuation, details)


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, invocation_metadata: Metadata) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class Call:
    """One gRPC call on one HTTP/2 stream: the h2 side's :class:`StreamHandler`."""

    __slots__ = (
        "buffer",
        "cancelled",
        "conn",
        "context",
        "encoding",
        "ended",
        "grant",
        "handler",
        "messages",
        "orphaned",
        "path",
        "pending",
        "queue",
        "sent_headers",
        "server",
        "stream",
        "task",
        "timer",
    )  # fmt: skip

    def __init__(
        self, server: NativeGrpcServer, conn: H2Connection, stream: Stream, headers: list[Any]
    ) -> None:
        self.server, self.conn, self.stream = server, conn, stream
        self.buffer = bytearray()
        self.messages: list[bytes] = []
        # A streamed call's messages, each with its size on the wire; None: no more.
        self.queue: asyncio.Queue[tuple[bytes, int] | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the call's grpc-timeout
        self.cancelled = self.ended = self.sent_headers = self.orphaned = False
        self.pending: asyncio.Future[Any] | None = None  # a fast call's queued work
        self.encoding = ""
        self.handler: grpc.RpcMethodHandler | None = None
        self.grant: Grant | None = None
        head = getattr(headers, "head", None)
        if head is None:
            head = read_head(headers)
            if isinstance(headers, HeaderList):
                headers.head = head  # the same block decodes to this same list again
        path = self.path = head.path
        self.encoding = head.encoding
        deadline = None if not head.timeout else deadline_of(head.timeout)
        self.context = CallContext(head.metadata, deadline, conn.peer, self)
        if head.problem is not None:
            self.finish(*head.problem)
            return
        self.handler = server.handlers.get(path)
        if self.handler is None:
            self.finish(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path}")
            return
        limit = server.max_concurrent_rpcs
        if limit and len(server.calls) >= limit:
            self.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server already runs {limit} calls (grpc_max_concurrent_rpcs)",
            )
            return
        server.calls.add(self)
        if deadline is not None:
            left = deadline - time.monotonic()
            self.timer = asyncio.get_running_loop().call_later(left, self._expired)
        if self.handler.request_streaming:
            self.queue = asyncio.Queue()
            self.task = asyncio.ensure_future(self._run(self._requests()))

    # -- from the connection ---------------------------------------------------------------

    def data(self, payload: bytes, end: bool) -> None:
        if self.ended:
            return
        if payload:
            self.buffer += payload
            if self.queue is None:
                self.conn.consumed(self.stream, len(payload))
            self._split()
        if end and not self.ended:
            if self.queue is not None:
                self.queue.put_nowait(None)
            elif len(self.messages) != 1 or self.buffer:
                self.finish(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a unary call takes one whole request message, not {len(self.messages)}"
                    + (" and a partial one" if self.buffer else ""),
                )
            elif self.path in self.server.fast:
                self._start_fast(self.server.fast[self.path], self.messages[0])
            else:
                self.task = asyncio.ensure_future(self._run(self.messages[0]))

    def _split(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 5 and not self.ended:
            size = int.from_bytes(buffer[1:5], "big")
            if size > self.server.max_message_bytes:
                self.finish(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"received message larger than max ({size} vs. "
                    f"{self.server.max_message_bytes}; grpc_max_message_bytes)",
                )
                return
            if len(buffer) < 5 + size:
                return
            flag = buffer[0]
            message = bytes(buffer[5 : 5 + size])
            del buffer[: 5 + size]
            if flag:
                try:
                    message = inflate(message, self.encoding, self.server.max_message_bytes)
                except ValueError as exc:
                    code = grpc.StatusCode.INTERNAL
                    if isinstance(exc, InflatedTooLarge):  # as grpcio answers
                        code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    self.finish(code, str(exc))
                    return
            if self.queue is not None:
                self.queue.put_nowait((message, 5 + size))
            else:
                self.messages.append(message)

    def reset(self) -> bool:
        """The stream is gone: stop, and say whether work it started still runs."""
        self.cancel()
        if self.orphaned:
            return False
        task, pending = self.task, self.pending
        if pending is not None:  # the batcher skips it if it has not run yet
            pending.cancel()
        elif task is not None and not task.done():
            task.add_done_callback(lambda _: self._work_stopped())
        else:
            return False
        self.orphaned = True
        return True

    def _expired(self) -> None:
        """The call's grpc-timeout has passed: end it as grpcio's server does, and drop
        its request if it has not run yet."""
        self.timer = None
        if self.ended:
            return
        if self.pending is not None:
            self.pending.cancel()
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _work_stopped(self) -> None:
        if self.orphaned:
            self.orphaned = False
            self.conn.orphan_done()

    def cancel(self) -> None:
        self.cancelled = True
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.calls.discard(self)
        if self.grant is not None and self.pending is None:  # else once the work stops
            self.grant.release()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.queue is not None:
            self.queue.put_nowait(None)

    # -- the handler -----------------------------------------------------------------------

    async def _requests(self) -> AsyncIterator[Any]:
        assert self.queue is not None and self.handler is not None
        decode = self.handler.request_deserializer
        while (item := await self.queue.get()) is not None:
            message, wire_size = item
            self.conn.consumed(self.stream, wire_size)
            yield decode(message) if decode is not None else message
        if self.cancelled:
            raise asyncio.CancelledError

    async def _run(self, request: Any) -> None:
        handler = self.handler
        assert handler is not None
        try:
            if not handler.request_streaming and handler.request_deserializer is not None:
                request = handler.request_deserializer(request)
            if handler.response_streaming:
                method = handler.unary_stream or handler.stream_stream
                async for answer in method(request, self.context):
                    await self.send_message(handler.response_serializer(answer))
                self.finish(self.context.code_ or grpc.StatusCode.OK, self.context.details_)
            else:
                method = handler.unary_unary or handler.stream_unary
                answer = await method(request, self.context)
                self.reply(handler.response_serializer(answer))
        except AbortCall as abort:
            self.finish(abort.code, abort.details)
        except asyncio.CancelledError:
            if not self.cancelled:
                raise
        except Exception as exc:
            log.exception("gRPC %s failed", self.path)
            self.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        finally:
            self.server.calls.discard(self)

    def _start_fast(self, method: FastUnary, message: bytes) -> None:
        try:
            if self.server.admit is not None:
                self.grant = self.server.admit(self.context.invocation_metadata())
            pending = method(message, self.context, self._fast_done)
            if not self.ended:
                self.pending = pending
        except Exception as exc:
            self._fast_done(exc)

    def _fast_done(self, answer: bytes | BaseException) -> None:
        self.pending = None
        if self.orphaned:
            self._work_stopped()
        if self.grant is not None:
            self.grant.release()
        if isinstance(answer, bytes):
            self.reply(answer)
        elif isinstance(answer, ModelportError):
            if isinstance(answer, Overloaded | TooManyRequests):
                retry = str(max(1, round(answer.retry_after)))
                self.context.set_trailing_metadata(((RETRY_AFTER, retry),))
            self.finish(STATUS[answer.kind], answer.message)
        else:
            log.error("gRPC %s failed", self.path, exc_info=answer)
            self.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(answer)}: {answer}")

    # -- answering -------------------------------------------------------------------------

    def reply(self, message: bytes) -> None:
        """A unary call's answer: headers, the message and OK trailers, in one go."""
        if self.ended:
            return
        if len(message) > self.server.max_message_bytes:
            self.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer is larger than max ({len(message)} vs. "
                f"{self.server.max_message_bytes}; grpc_max_message_bytes)",
            )
            return
        self.ended = True
        self.server.calls.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        trailers = OK_TRAILERS + metadata_block(self.context.trailing)
        self.conn.send(self.stream, HEAD, framed, trailers)

    async def send_message(self, message: bytes) -> None:
        if self.ended:
            raise asyncio.CancelledError
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        head = None if self.sent_headers else HEAD
        self.sent_headers = True
        self.conn.send(self.stream, head, framed)
        if self.conn.blocked(self.stream):
            await self.conn.drained(self.stream)

    def finish(self, code: grpc.StatusCode, details: str = "") -> None:
        """End the call with ``code`` (trailers, or trailers alone before any message)."""
        if self.ended:
            return
        self.ended = True
        self.server.calls.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        block = encode_literal(b"grpc-status", str(code.value[0]).encode())
        if details:
            block += encode_literal(b"grpc-message", percent_encoded(details))
        block += metadata_block(self.context.trailing)
        if not self.sent_headers:
            block = BARE_HEAD + block
        if self.queue is not None:
            self.queue.put_nowait(None)
        self.conn.send(self.stream, None, None, block)
