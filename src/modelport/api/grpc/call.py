"""One gRPC call of the native transport (``native.py``), from its HEADERS to its trailers.

A :class:`Call` is the h2 side's ``StreamHandler`` for one stream: it splits the
stream's data into messages, runs the method (a task, or for a ``fast`` unary method a
callback with no task), and writes the answer. Its life is one :class:`CallState`:

``OPEN`` (reading, or running; nothing sent) -> ``STREAMING`` (a streamed answer's
headers are out) -> ``ENDED`` (trailers sent). A stream that goes away first is
``CANCELLED``, or ``ORPHANED`` while work it started still runs (the connection keeps
its place until that work stops: see ``h2.py`` on rapid reset).

:class:`CallContext` is the part of ``grpc.aio.ServicerContext`` the servicers use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from enum import IntEnum
from typing import Any, Protocol

import grpc

from modelport.api.grpc.errors import STATUS, error_trailers
from modelport.api.grpc.h2 import H2Connection
from modelport.api.grpc.h2_flow import Stream
from modelport.api.grpc.hpack_codec import HeaderList, encode_literal
from modelport.api.grpc.wire import (
    BARE_HEAD,
    HEAD,
    OK_TRAILERS,
    Metadata,
    deadline_of,
    inflate,
    metadata_block,
    percent_encoded,
    read_head,
)
from modelport.codecs.compression import InflatedTooLarge
from modelport.errors import ModelportError
from modelport.observability.failures import FailureLog
from modelport.security.access import Grant

log = logging.getLogger("modelport.grpc")
# A crash per call under load would flood the log: the first few in full, then counts.
failures = FailureLog(log)

FastDone = Callable[[bytes | BaseException], None]
# A unary method answered without a task: given the request's bytes and the context, it
# calls ``done`` with the serialized answer or the error, now or from a callback. It
# returns the future of the work it queued (cancelled if the client gives up), or None.
FastUnary = Callable[[bytes, Any, FastDone], "asyncio.Future[Any] | None"]
Admit = Callable[[Metadata], Grant]


class CallState(IntEnum):
    """Where a call is in its life; each state past ``STREAMING`` is an end."""

    OPEN = 0  # reading the request or running it; nothing sent yet
    STREAMING = 1  # a streamed answer's headers have been sent
    ENDED = 2  # answered: the trailers are out
    CANCELLED = 3  # the stream went away (reset, connection lost, server stopping)
    ORPHANED = 4  # went away while work it started still runs


class Methods(Protocol):
    """What a call needs of its server (``native.NativeGrpcServer``)."""

    handlers: dict[str, grpc.RpcMethodHandler]
    fast: dict[str, FastUnary]  # unary methods answered with no task; ``admit`` checks keys
    calls: set[Call]  # the calls in progress
    max_message_bytes: int
    max_concurrent_rpcs: int
    admit: Admit | None


class AbortCall(Exception):
    """Raised by :meth:`CallContext.abort`: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """The servicer's view of one call (the ``grpc.aio.ServicerContext`` it uses)."""

    __slots__ = ("_call", "_deadline", "_metadata", "_peer", "code_", "details_", "trailing")

    def __init__(
        self, call: Call, *, metadata: Metadata, deadline: float | None, peer: str
    ) -> None:
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
        return self._call.state >= CallState.CANCELLED

    def done(self) -> bool:
        return self._call.state >= CallState.ENDED


class Call:
    """One gRPC call on one HTTP/2 stream: the h2 side's ``StreamHandler``."""

    __slots__ = (
        "buffer",
        "conn",
        "context",
        "encoding",
        "grant",
        "handler",
        "messages",
        "path",
        "pending",
        "queue",
        "server",
        "state",
        "stream",
        "task",
        "timer",
    )

    def __init__(
        self, server: Methods, *, conn: H2Connection, stream: Stream, headers: list[Any]
    ) -> None:
        self.server, self.conn, self.stream = server, conn, stream
        self.state = CallState.OPEN
        self.buffer = bytearray()
        self.messages: list[bytes] = []
        # A streamed call's messages, each with its size on the wire; None: no more.
        self.queue: asyncio.Queue[tuple[bytes, int] | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the call's grpc-timeout
        self.pending: asyncio.Future[Any] | None = None  # a fast call's queued work
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
        self.context = CallContext(self, metadata=head.metadata, deadline=deadline, peer=conn.peer)
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
        if self.state >= CallState.ENDED:
            return
        if payload:
            self.buffer += payload
            if self.queue is None:
                self.conn.consumed(self.stream, len(payload))
            self._split()
        if end and self.state < CallState.ENDED:
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
        limit = self.server.max_message_bytes
        while len(buffer) >= 5 and self.state < CallState.ENDED:
            size = int.from_bytes(buffer[1:5], "big")
            if size > limit:
                self.finish(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"received message larger than max ({size} vs. {limit}; "
                    "grpc_max_message_bytes)",
                )
                return
            if len(buffer) < 5 + size:
                return
            flag = buffer[0]
            message = bytes(buffer[5 : 5 + size])
            del buffer[: 5 + size]
            if flag:
                try:
                    message = inflate(message, self.encoding, limit)
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
        if self.state is CallState.ORPHANED:
            return False
        self.cancel()
        task, pending = self.task, self.pending
        if pending is not None:  # the batcher skips it if it has not run yet
            pending.cancel()
        elif task is not None and not task.done():
            task.add_done_callback(lambda _: self._work_stopped())
        else:
            return False
        self.state = CallState.ORPHANED
        return True

    def _expired(self) -> None:
        """The call's grpc-timeout has passed: end it as grpcio's server does, and drop
        its request if it has not run yet."""
        self.timer = None
        if self.state >= CallState.ENDED:
            return
        if self.pending is not None:
            self.pending.cancel()
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _work_stopped(self) -> None:
        if self.state is CallState.ORPHANED:
            self.state = CallState.CANCELLED
            self.conn.orphan_done()

    def cancel(self) -> None:
        """The call is over without an answer (its stream went, or the server stops)."""
        if self.state < CallState.CANCELLED:
            self.state = CallState.CANCELLED
        self._stop_timer()
        if self.grant is not None and self.pending is None:  # else once the work stops
            self.grant.release()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.queue is not None:
            self.queue.put_nowait(None)

    def _stop_timer(self) -> None:
        self.server.calls.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    # -- the handler -----------------------------------------------------------------------

    async def _requests(self) -> AsyncIterator[Any]:
        assert self.queue is not None and self.handler is not None
        decode = self.handler.request_deserializer
        while (item := await self.queue.get()) is not None:
            message, wire_size = item
            self.conn.consumed(self.stream, wire_size)
            yield decode(message) if decode is not None else message
        if self.state >= CallState.CANCELLED:
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
            if self.state < CallState.CANCELLED:
                raise
        except Exception as exc:
            failures.failed(self.path, "crashed", "gRPC %s failed", self.path, exc_info=exc)
            self.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        finally:
            self.server.calls.discard(self)

    def _start_fast(self, method: FastUnary, message: bytes) -> None:
        try:
            if self.server.admit is not None:
                self.grant = self.server.admit(self.context.invocation_metadata())
            pending = method(message, self.context, self._fast_done)
            if self.state < CallState.ENDED:
                self.pending = pending
        except Exception as exc:
            self._fast_done(exc)

    def _fast_done(self, answer: bytes | BaseException) -> None:
        self.pending = None
        self._work_stopped()
        if self.grant is not None:
            self.grant.release()
        if isinstance(answer, bytes):
            self.reply(answer)
        elif isinstance(answer, ModelportError):
            trailers = error_trailers(answer)
            if trailers:
                self.context.set_trailing_metadata(trailers)
            self.finish(STATUS[answer.kind], answer.message)
        else:
            failures.failed(self.path, "crashed", "gRPC %s failed", self.path, exc_info=answer)
            self.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(answer)}: {answer}")

    # -- answering -------------------------------------------------------------------------

    def reply(self, message: bytes) -> None:
        """A unary call's answer: headers, the message and OK trailers, in one go."""
        if self.state >= CallState.ENDED:
            return
        limit = self.server.max_message_bytes
        if len(message) > limit:
            self.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer is larger than max ({len(message)} vs. {limit}; "
                "grpc_max_message_bytes)",
            )
            return
        self.state = CallState.ENDED
        self._stop_timer()
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        trailers = OK_TRAILERS + metadata_block(self.context.trailing)
        self.conn.send(self.stream, headers=HEAD, data=framed, trailers=trailers)

    async def send_message(self, message: bytes) -> None:
        """One message of a streamed answer (its headers go with the first)."""
        if self.state >= CallState.ENDED:
            raise asyncio.CancelledError
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        head = HEAD if self.state is CallState.OPEN else None
        self.state = CallState.STREAMING
        self.conn.send(self.stream, headers=head, data=framed)
        if self.conn.blocked(self.stream):
            await self.conn.drained(self.stream)

    def finish(self, code: grpc.StatusCode, details: str = "") -> None:
        """End the call with ``code`` (trailers, or trailers alone before any message)."""
        if self.state >= CallState.ENDED:
            return
        streaming = self.state is CallState.STREAMING
        self.state = CallState.ENDED
        self._stop_timer()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        block = encode_literal(b"grpc-status", str(code.value[0]).encode())
        if details:
            block += encode_literal(b"grpc-message", percent_encoded(details))
        block += metadata_block(self.context.trailing)
        if not streaming:
            block = BARE_HEAD + block
        if self.queue is not None:
            self.queue.put_nowait(None)
        self.conn.send(self.stream, trailers=block)
