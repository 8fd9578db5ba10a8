"""The hot path: ``POST /v2/models/{m}[/versions/{v}]/infer`` answered without a framework.

One routine, :class:`FastInfer`, parses, queues and answers an infer request, with no
task of its own: the core's two halves (``start``/``finish``) run when the body is in
and from the batch's callback. It tags every answer with the request's id and logs a
5xx with it. Two doors lead to it:

- :class:`InferFastPath`, an ASGI middleware in front of FastAPI. Any ASGI server (and
  the in-process tests, through httpx's ASGI transport) goes through it.
- :func:`http_protocol`, the protocol ``modelport serve`` gives uvicorn. It is uvicorn's
  own httptools protocol, except that an infer request skips the ASGI cycle: no task
  per request for the ASGI app, no message dicts, and the response leaves in a single
  ``write`` with pre-built headers. It profiled at a third of the server's CPU per
  request. Every other request, keep-alive, pipelining and shutdown stay uvicorn's.
  It leans on uvicorn's ``HttpToolsProtocol`` internals (the request cycle's ``body``,
  ``more_body``, ``response_complete``), so pyproject.toml bounds uvicorn's version and
  the server tests exercise it on every run. What it knows of an infer request lives
  in one :class:`FastRequest`, in one slot of the connection.

Both doors answer 413 for a body over ``max_request_bytes`` as ``limits.py`` words it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from modelport.api.http.asgi import (
    REQUEST_ID,
    SECURITY_HEADERS,
    Answer,
    ASGIApp,
    Receive,
    Scope,
    Send,
    request_id_for,
    send_answer,
)
from modelport.api.http.errors import error_parts
from modelport.api.http.limits import body_too_large
from modelport.api.http.v2 import InferHandler, inflates_off_loop
from modelport.codecs.v2_json import DecodedRequest
from modelport.core.tracing import RequestSpan, Tracer
from modelport.errors import ModelportError
from modelport.numbers import declared_over
from modelport.observability.failures import FailureLog
from modelport.observability.metrics import request_id
from modelport.security.access import Grant

log = logging.getLogger("modelport.http")
# Every failed HTTP answer is logged through it, fast path or not (app.py).
failures = FailureLog(log)
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
INFER_SPAN = "POST /v2/models/{model}/infer"  # the span's name: its route, not its path
_CRASHED = Answer(500, b'{"error":"internal error; see the server log"}')
_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus if s.value >= 200
}


@dataclass(frozen=True, slots=True)
class FastPathConfig:
    """How the fast path treats an infer request."""

    max_request_bytes: int
    # API keys (api/http/auth.py): admits an infer request (its ASGI scope) or raises a
    # ModelportError; None when keys are off. Other requests are checked by the ASGI
    # app's middleware.
    admit: Callable[[Scope], Grant] | None = None
    header_timeout_s: float = 30.0  # a request's headers must arrive within this
    body_timeout_s: float = 60.0  # and its body may pause at most this long
    # CORS on (cors_origins): a request from a web page (it has an Origin header) goes
    # through the ASGI app, whose CORS middleware adds the headers the browser needs.
    cross_origin: bool = False


@dataclass(frozen=True, slots=True)
class InferTarget:
    """Which model an infer request asks, its headers, and its id."""

    model: str
    version: str
    headers: dict[str, str]
    rid: str

    @classmethod
    def of(cls, match: re.Match[str], raw_headers: Iterable[tuple[bytes, bytes]]) -> InferTarget:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        rid = request_id_for(headers.get("x-request-id"))
        return cls(match.group(1), match.group(2) or "", headers, rid)


class FastInfer:
    """Parse, queue and answer one infer request: the routine both doors run."""

    def __init__(self, handler: InferHandler) -> None:
        self.handler = handler
        self.tracer = handler.service.tracer  # None: tracing is off

    def start(
        self, target: InferTarget, body: bytes, answer: Callable[[Answer], None]
    ) -> asyncio.Future[Any] | None:
        """Parse and queue the request. ``answer`` is called once with its answer: now,
        for a request refused at once, or from the batch's callback. Returns the queued
        work (cancel it when the client leaves), or None. A compressed body over
        ``v2.INLINE_INFLATE_BYTES`` is inflated in a worker thread first (the returned
        work is then that inflation); an uncompressed one costs one check more."""
        span = None
        if self.tracer is not None:
            span, answer = self._traced(target, answer, self.tracer)
        if inflates_off_loop(body, target.headers):
            return asyncio.ensure_future(self._inflate_then_queue(target, body, answer, span))
        try:
            decoded = self.handler.parse(target.model, target.version, body, target.headers)
        except Exception as exc:
            answer(self._failed(target, exc))
            return None
        return self._queue(target, decoded, answer, span)

    @staticmethod
    def _traced(
        target: InferTarget, answer: Callable[[Answer], None], tracer: Tracer
    ) -> tuple[RequestSpan, Callable[[Answer], None]]:
        """The request's span, and ``answer`` ending it first."""
        span = tracer.request(
            kind="http", name=INFER_SPAN, model=target.model, carrier=target.headers
        )

        def answered(reply: Answer) -> None:
            error = reply.body[:300].decode(errors="replace") if reply.status >= 500 else ""
            span.end(error, status=reply.status)
            answer(reply)

        return span, answered

    async def _inflate_then_queue(
        self,
        target: InferTarget,
        body: bytes,
        answer: Callable[[Answer], None],
        span: RequestSpan | None,
    ) -> None:
        try:
            inflated = await self.handler.inflate_off_loop(body, target.headers)
            del body
            decoded = self.handler.decode(target.model, target.version, inflated, target.headers)
        except Exception as exc:
            answer(self._failed(target, exc))
            return
        self._queue(target, decoded, answer, span)

    def _queue(
        self,
        target: InferTarget,
        decoded: DecodedRequest,
        answer: Callable[[Answer], None],
        span: RequestSpan | None,
    ) -> asyncio.Future[Any] | None:
        handler = self.handler
        service = handler.service
        request = decoded.request if span is None else replace(decoded.request, trace=span)

        def done() -> None:  # called by the batcher once the future is resolved
            try:
                response = service.finish(started)
                status, body, headers = handler.reply(response, decoded, target.headers)
            except Exception as exc:
                answer(self._failed(target, exc))
                return
            answer(self.tagged(target, status, body, headers))

        try:
            started = service.start(request, done)
        except Exception as exc:
            answer(self._failed(target, exc))
            return None
        return started.future

    def _failed(self, target: InferTarget, exc: Exception) -> Answer:
        """A core error's answer, or a crash logged with the request's id (both tagged)."""
        if isinstance(exc, ModelportError):
            return self.tagged(target, *error_parts(exc), kind=exc.kind.value)
        request_id.set(target.rid)
        failures.failed(target.model, "crashed", "infer %s crashed", target.model, exc_info=exc)
        return self.tagged(target, _CRASHED.status, _CRASHED.body, [], kind="crashed", logged=True)

    def refuse(self, target: InferTarget, exc: ModelportError) -> Answer:
        """The answer to a request refused before its body was read."""
        return self.tagged(target, *error_parts(exc), kind=exc.kind.value)

    @staticmethod
    def tagged(
        target: InferTarget,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        kind: str = "",
        logged: bool = False,
    ) -> Answer:
        """The answer, carrying the request's id; a failure is logged with it, at the
        rate :data:`failures` allows (``logged``: it was already)."""
        if status >= 500 and not logged:
            request_id.set(target.rid)
            failures.failed(
                target.model,
                kind or f"HTTP {status}",
                "infer %s failed with %d: %s",
                target.model,
                status,
                body[:300],
            )
        headers.append((REQUEST_ID, target.rid.encode("latin-1")))
        headers.extend(SECURITY_HEADERS)
        return Answer(status, body, headers)


class InferFastPath:
    """ASGI middleware answering v2 infer requests itself; the rest goes to ``app``."""

    def __init__(self, app: ASGIApp, infer: InferHandler, max_body: int) -> None:
        self.app = app
        self.infer = FastInfer(infer)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                await self._infer(InferTarget.of(match, scope["headers"]), receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(self, target: InferTarget, receive: Receive, send: Send) -> None:
        request_id.set(target.rid)  # this door has a task of its own: its logs carry it
        body = await self._read_body(target.headers, receive)
        if body is None:
            await send_answer(send, self.infer.refuse(target, body_too_large(self.max_body)))
            return
        answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def answer(reply: Answer) -> None:
            if not answered.done():
                answered.set_result(reply)

        work = self.infer.start(target, body, answer)
        try:
            reply = await answered
        except asyncio.CancelledError:
            if work is not None:  # the batcher drops it if it has not run yet
                work.cancel()
            raise
        await send_answer(send, reply)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length", "")
        if declared_over(declared, self.max_body):
            return None
        parts, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
            more = message.get("more_body", False)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _response_bytes(answer: Answer, keep_alive: bool) -> bytes:
    status = answer.status
    head = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Error\r\n".encode()]
    if not any(k == b"content-type" for k, _ in answer.headers):
        head.append(b"content-type: application/json\r\n")
    for key, value in answer.headers:
        head.append(b"%s: %s\r\n" % (key, value))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(answer.body))
    head.append(answer.body)
    return b"".join(head)


@dataclass(frozen=True, slots=True)
class FastRequest:
    """One infer request on a connection, from its headers to its answer."""

    cycle: RequestResponseCycle  # uvicorn's, for its body and keep-alive state
    target: InferTarget
    grant: Grant | None  # its place under its API key's limit, held until answered
    started: bool = False  # parsed and queued (or answered at once)
    work: asyncio.Future[Any] | None = None  # what it queued, cancelled if the client goes

    def running(self, work: asyncio.Future[Any] | None) -> FastRequest:
        return FastRequest(self.cycle, self.target, self.grant, True, work)


class _FastInferProtocol(HttpToolsProtocol):
    """uvicorn's protocol, with infer requests answered straight from the parser."""

    infer: FastInfer
    fast_config: FastPathConfig
    _slow_watch: asyncio.TimerHandle | None  # the class's sweep of slow requests
    header_since: float | None = None  # when the headers of the request being read began
    body_since: float | None = None  # when its body last moved, while one is expected
    # The latest infer request on this connection: the one being read, or the one
    # answered last (a pipelined request that follows it is read by uvicorn, and is
    # started here once this one is answered).
    fast: FastRequest | None = None

    # -- slow clients: uvicorn times out a connection idle between requests; these
    # cover the rest (a connection that never sends, headers or a body that trickle in).

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Sending nothing at all gets the same timeout as idling after a response.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        cls = type(self)
        if cls._slow_watch is None:
            cls._slow_watch = self.loop.call_later(1.0, cls._sweep, self.connections, self.loop)

    def on_message_begin(self) -> None:
        self.header_since = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.header_since = None
        self.body_since = self.loop.time()  # until on_message_complete, a body is due
        super().on_headers_complete()

    @classmethod
    def _sweep(cls, connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        """Once a second while there are connections: 408 and close those whose request
        headers began over ``header_timeout_s`` ago and are not complete, or whose body
        has not moved for ``body_timeout_s``."""
        cls._slow_watch = None
        now = loop.time()
        header_timeout, body_timeout = (
            cls.fast_config.header_timeout_s,
            cls.fast_config.body_timeout_s,
        )
        for conn in list(connections):
            since = conn.header_since
            if since is not None and now - since > header_timeout:
                conn.header_since = None
                conn._timed_out(
                    f"the request's headers did not arrive within {header_timeout:g} s "
                    "(request_header_timeout_s); send them at once"
                )
            body = conn.body_since
            if body is None:
                continue
            cycle = conn.cycle
            if conn.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                conn.body_since = now  # waiting on us, not on the client
            elif now - body > body_timeout:
                conn.body_since = None
                conn._timed_out(
                    f"the request's body stopped for {body_timeout:g} s (request_body_timeout_s)"
                )
        if connections:
            cls._slow_watch = loop.call_later(1.0, cls._sweep, connections, loop)

    def _timed_out(self, message: str) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_complete:
            answer = Answer(408, orjson.dumps({"error": message}))
            self.transport.write(_response_bytes(answer, keep_alive=False))
        self.transport.close()

    # -- infer requests ---------------------------------------------------------------------

    def _current(self) -> FastRequest | None:
        """The infer request the parser is reading now, if it is one."""
        fast = self.fast
        return fast if fast is not None and fast.cycle is self.cycle else None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope = cycle.scope
        match = INFER_PATH.match(scope["path"]) if scope["method"] == "POST" else None
        if match is None or (self.fast_config.cross_origin and _from_a_page(scope)):
            super()._start_asgi_task(cycle, app)
            return
        target = InferTarget.of(match, scope["headers"])
        grant = None
        if self.fast_config.admit is not None:
            try:
                # Held from here until the answer is written (_finish releases it).
                grant = self.fast_config.admit(cast(Scope, scope))
            except ModelportError as exc:
                # Refused before the body is read: answer now, drop the rest, close.
                self.fast = FastRequest(cycle, target, None, started=True)
                self._finish(self.fast, self.infer.refuse(target, exc), close=cycle.more_body)
                return
        fast = self.fast = FastRequest(cycle, target, grant)
        if cycle.waiting_for_100_continue:
            cycle.waiting_for_100_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        declared = target.headers.get("content-length", "")
        if declared_over(declared, self.fast_config.max_request_bytes):
            self._refuse_too_large(fast)
        elif not cycle.more_body:
            self._start_fast(fast)

    def _refuse_too_large(self, fast: FastRequest) -> None:
        refusal = body_too_large(self.fast_config.max_request_bytes)
        self._finish(fast, self.infer.refuse(fast.target, refusal), close=True)

    def on_body(self, body: bytes) -> None:
        self.body_since = self.loop.time()
        fast = self._current()
        if fast is None:
            super().on_body(body)
            return
        cycle = fast.cycle
        if cycle.response_complete:
            return  # answered early; the rest of the body is dropped
        cycle.body += body
        if len(cycle.body) > self.fast_config.max_request_bytes:
            self._refuse_too_large(fast)

    def connection_lost(self, exc: Exception | None) -> None:
        fast = self._current()
        super().connection_lost(exc)
        if fast is None or fast.cycle.response_complete:
            return
        # A request cut off before its body was complete never reaches _finish: give its
        # place under the key's limit back here (a started one is released when answered).
        if not fast.started and fast.grant is not None:
            fast.grant.release()
        # A queued request whose client is gone is dropped before it runs (the batcher
        # skips cancelled requests); its callback still comes, and writes nothing.
        if fast.work is not None:
            fast.work.cancel()

    def on_message_complete(self) -> None:
        self.body_since = None
        super().on_message_complete()
        fast = self._current()
        if fast is None:
            return
        if not fast.cycle.response_complete:
            self._start_fast(fast)
        elif not fast.cycle.keep_alive:
            # Answered early (413): the client has now sent everything and read the answer.
            self.transport.close()

    def _start_fast(self, fast: FastRequest) -> None:
        """Parse, validate and queue the request now; answer from the batch's callback,
        which the batcher calls as soon as the batch is done (in the same loop
        iteration: a future's done-callback would wait for the next one)."""
        if fast.started:
            return
        work = self.infer.start(
            fast.target, bytes(fast.cycle.body), lambda answer: self._finish(fast, answer)
        )
        if self.fast is fast:  # (an answer given at once may have started the next one)
            self.fast = fast.running(work)

    def _finish(self, fast: FastRequest, answer: Answer, close: bool = False) -> None:
        cycle = fast.cycle
        if cycle.response_complete:
            return
        cycle.response_complete = True
        if fast.grant is not None:
            fast.grant.release()
        keep_alive = cycle.keep_alive and not close
        if not cycle.disconnected:
            self.transport.write(_response_bytes(answer, keep_alive))
            if not keep_alive:
                cycle.keep_alive = False
                if not cycle.more_body:
                    self.transport.close()
                # else: the rest of the body is read and dropped, then the connection
                # closes (on_message_complete), so the client gets to read this answer.
        cycle.message_event.set()
        cycle.on_response()


def _from_a_page(scope: Any) -> bool:
    return any(key == b"origin" for key, _ in scope["headers"])


def http_protocol(handler: InferHandler, config: FastPathConfig) -> type[asyncio.Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``."""
    attributes = {"infer": FastInfer(handler), "fast_config": config, "_slow_watch": None}
    return type("InferHttpProtocol", (_FastInferProtocol,), attributes)
