"""The hot path: ``POST /v2/models/{m}[/versions/{v}]/infer`` answered without a framework.

Two doors lead to the same :class:`InferHandler`:

- :class:`InferFastPath`, an ASGI middleware in front of FastAPI. Any ASGI server (and
  the in-process tests, through httpx's ASGI transport) goes through it.
- :func:`http_protocol`, the protocol ``modelport serve`` gives uvicorn. It is uvicorn's
  own httptools protocol, except that an infer request skips the ASGI cycle: no task
  per request for the ASGI app, no message dicts, and the response leaves in a single
  ``write`` with pre-built headers. It profiled at a third of the server's CPU per
  request. Every other request, keep-alive, pipelining and shutdown stay uvicorn's.
  It leans on uvicorn's ``HttpToolsProtocol`` internals (the request cycle's ``body``,
  ``more_body``, ``response_complete``), so pyproject.toml bounds uvicorn's version and
  the server tests exercise it on every run.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from modelport.api.http.errors import error_parts
from modelport.api.http.v2 import InferHandler, inflates_off_loop
from modelport.codecs.v2_json import DecodedRequest
from modelport.core.service import StartedInference
from modelport.errors import ModelportError
from modelport.observability.metrics import request_id
from modelport.security.access import Grant

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("modelport.http")
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_ids = itertools.count(1)
_PREFIX = uuid.uuid4().hex[:8]


def new_request_id() -> str:
    """Unique per process run, and cheaper than a uuid per request."""
    return f"{_PREFIX}-{next(_ids):x}"


def _too_large(limit: int) -> bytes:
    return orjson.dumps({
        "error": f"request body is over the limit of {limit} bytes (max_request_bytes); "
        "send smaller batches or raise the limit"
    })  # fmt: skip


class InferFastPath:
    """ASGI middleware answering v2 infer requests itself; the rest goes to ``app``."""

    def __init__(self, app: ASGIApp, infer: InferHandler, max_body: int) -> None:
        self.app = app
        self.infer = infer
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                await self._infer(match.group(1), match.group(2) or "", scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(
        self, model: str, version: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await self._read_body(headers, receive)
        if body is None:
            await _send(send, 413, _too_large(self.max_body), [])
            return
        status, out, extra = await _answer(self.infer, model, version, body, headers)
        await _send(send, status, out, extra)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
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


async def _answer(
    infer: InferHandler, model: str, version: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    rid = headers.get("x-request-id") or new_request_id()
    request_id.set(rid)
    status, out, extra = await infer(model, version, body, headers)
    if status >= 500:
        log.warning("infer %s failed with %d: %s", model, status, out[:300])
    extra.append((b"x-request-id", rid.encode()))
    return status, out, extra


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    if not any(k == b"content-type" for k, _ in headers):
        headers = [(b"content-type", b"application/json"), *headers]
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


_CRASHED: tuple[int, bytes, list[tuple[bytes, bytes]]] = (
    500,
    b'{"error":"internal error; see the server log"}',
    [],
)
_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus if s.value >= 200
}


def _response_bytes(
    status: int, body: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> bytes:
    head = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Error\r\n".encode()]
    if not any(k == b"content-type" for k, _ in headers):
        head.append(b"content-type: application/json\r\n")
    for key, value in headers:
        head.append(b"%s: %s\r\n" % (key, value))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(body))
    head.append(body)
    return b"".join(head)


class _FastInferProtocol(HttpToolsProtocol):
    """uvicorn's protocol, with infer requests answered straight from the parser."""

    infer: InferHandler
    max_body: int
    # API keys (api/http/auth.py): admits an infer request or raises a ModelportError;
    # None when keys are off. Other requests are checked by the ASGI app's middleware.
    admit: Callable[[Scope], Grant] | None
    header_timeout_s: float
    body_timeout_s: float
    _slow_watch: asyncio.TimerHandle | None  # the class's sweep of slow requests
    header_since: float | None = None  # when the headers of the request being read began
    body_since: float | None = None  # when its body last moved, while one is expected

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
        for conn in list(connections):
            since = conn.header_since
            if since is not None and now - since > cls.header_timeout_s:
                conn.header_since = None
                conn._timed_out(
                    f"the request's headers did not arrive within {cls.header_timeout_s:g} s "
                    "(request_header_timeout_s); send them at once"
                )
            body = conn.body_since
            if body is None:
                continue
            cycle = conn.cycle
            if conn.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                conn.body_since = now  # waiting on us, not on the client
            elif now - body > cls.body_timeout_s:
                conn.body_since = None
                conn._timed_out(
                    f"the request's body stopped for {cls.body_timeout_s:g} s "
                    "(request_body_timeout_s)"
                )
        if connections:
            cls._slow_watch = loop.call_later(1.0, cls._sweep, connections, loop)

    def _timed_out(self, message: str) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_complete:
            body = orjson.dumps({"error": message})
            self.transport.write(_response_bytes(408, body, [], keep_alive=False))
        self.transport.close()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope = cycle.scope
        match = INFER_PATH.match(scope["path"]) if scope["method"] == "POST" else None
        if match is None:
            super()._start_asgi_task(cycle, app)
            return
        cycle.fast_target = (match.group(1), match.group(2) or "")  # type: ignore[attr-defined]
        cycle.fast_started = False  # type: ignore[attr-defined]
        cycle.fast_grant = None  # type: ignore[attr-defined]
        if self.admit is not None:
            try:
                # Held from here until the answer is written (_finish releases it).
                cycle.fast_grant = self.admit(cast(Scope, scope))  # type: ignore[attr-defined]
            except ModelportError as exc:
                # Refused before the body is read: answer now, drop the rest, close.
                self._finish(cycle, *error_parts(exc), close=cycle.more_body)
                return
        if cycle.waiting_for_100_continue:
            cycle.waiting_for_100_continue = False
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_body:
            self._finish(cycle, 413, _too_large(self.max_body), [], close=True)
        elif not cycle.more_body:
            self._start_fast(cycle)

    def on_body(self, body: bytes) -> None:
        self.body_since = self.loop.time()
        cycle = self.cycle
        if getattr(cycle, "fast_target", None) is None:
            super().on_body(body)
            return
        if cycle.response_complete:
            return  # answered early; the rest of the body is dropped
        cycle.body += body
        if len(cycle.body) > self.max_body:
            self._finish(cycle, 413, _too_large(self.max_body), [], close=True)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is None or cycle.response_complete:
            return
        # A request cut off before its body was complete never reaches _finish: give its
        # place under the key's limit back here (a started one is released when answered).
        if not getattr(cycle, "fast_started", True):
            grant = getattr(cycle, "fast_grant", None)
            if grant is not None:
                grant.release()
        # A queued request whose client is gone is dropped before it runs (the batcher
        # skips cancelled requests); its callback still comes, and writes nothing.
        future = getattr(cycle, "fast_future", None)
        if future is not None:
            future.cancel()

    def on_message_complete(self) -> None:
        self.body_since = None
        super().on_message_complete()
        cycle = self.cycle
        if getattr(cycle, "fast_target", None) is None:
            return
        if not cycle.response_complete:
            self._start_fast(cycle)
        elif not cycle.keep_alive:
            # Answered early (413): the client has now sent everything and read the answer.
            self.transport.close()

    def _start_fast(self, cycle: RequestResponseCycle) -> None:
        """Parse, validate and queue the request now; answer from the batch's callback.

        No task per request: the core's two halves (``start``/``finish``) run here and in
        ``_complete``, which the batcher calls as soon as the batch is done (in the same
        loop iteration: a future's done-callback would wait for the next one). A compressed
        body over ``INLINE_INFLATE_BYTES`` is first inflated in a worker thread
        (``_inflate_then_start``); an uncompressed one costs one check more.
        """
        if cycle.fast_started:  # type: ignore[attr-defined]
            return
        cycle.fast_started = True  # type: ignore[attr-defined]
        model, version = cycle.fast_target  # type: ignore[attr-defined]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in cycle.scope["headers"]}
        rid = headers.get("x-request-id") or new_request_id()
        body = bytes(cycle.body)
        if inflates_off_loop(body, headers):
            # Inflating it may take a while: in a worker thread, and on from there.
            cycle.fast_inflating = self.loop.create_task(  # type: ignore[attr-defined]
                self._inflate_then_start(cycle, rid, model, version, body, headers)
            )
            return
        try:
            decoded = self.infer.parse(model, version, body, headers)
        except ModelportError as exc:
            self._answer(cycle, rid, model, *error_parts(exc))
            return
        except Exception:
            log.exception("infer %s crashed", model)
            self._answer(cycle, rid, model, *_CRASHED)
            return
        self._start_decoded(cycle, rid, model, headers, decoded)

    async def _inflate_then_start(
        self,
        cycle: RequestResponseCycle,
        rid: str,
        model: str,
        version: str,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        """A compressed body: inflated off the event loop, then decoded and queued."""
        try:
            inflated = await self.infer.inflate_off_loop(body, headers)
            del body
            if cycle.disconnected:  # nobody reads the answer: _finish writes nothing
                self._finish(cycle, 499, b"", [], close=True)
                return
            decoded = self.infer.decode(model, version, inflated, headers)
        except ModelportError as exc:
            self._answer(cycle, rid, model, *error_parts(exc))
            return
        except Exception:
            log.exception("infer %s crashed", model)
            self._answer(cycle, rid, model, *_CRASHED)
            return
        self._start_decoded(cycle, rid, model, headers, decoded)

    def _start_decoded(
        self,
        cycle: RequestResponseCycle,
        rid: str,
        model: str,
        headers: dict[str, str],
        decoded: DecodedRequest,
    ) -> None:
        """Queue a decoded request; ``_complete`` answers once its batch is done."""

        def done() -> None:  # called by the batcher once the future is resolved
            self._complete(cycle, rid, headers, decoded, started)

        try:
            started = self.infer.service.start(decoded.request, done)
            cycle.fast_future = started.future  # type: ignore[attr-defined]
        except ModelportError as exc:
            self._answer(cycle, rid, model, *error_parts(exc))
        except Exception:
            log.exception("infer %s crashed", model)
            self._answer(cycle, rid, model, *_CRASHED)

    def _complete(
        self,
        cycle: RequestResponseCycle,
        rid: str,
        headers: dict[str, str],
        decoded: DecodedRequest,
        started: StartedInference,
    ) -> None:
        model = decoded.request.model_name
        try:
            response = self.infer.service.finish(started)
            status, body, extra = self.infer.reply(response, decoded, headers)
        except ModelportError as exc:
            status, body, extra = error_parts(exc)
        except Exception:
            log.exception("infer %s crashed", model)
            status, body, extra = _CRASHED
        self._answer(cycle, rid, model, status, body, extra)

    def _answer(
        self,
        cycle: RequestResponseCycle,
        rid: str,
        model: str,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        if status >= 500:
            request_id.set(rid)
            log.warning("infer %s failed with %d: %s", model, status, body[:300])
        self._finish(cycle, status, body, [*headers, (b"x-request-id", rid.encode())], False)

    def _finish(
        self,
        cycle: RequestResponseCycle,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        close: bool,
    ) -> None:
        if cycle.response_complete:
            return
        cycle.response_complete = True
        grant = getattr(cycle, "fast_grant", None)
        if grant is not None:
            grant.release()
        keep_alive = cycle.keep_alive and not close
        if not cycle.disconnected:
            self.transport.write(_response_bytes(status, body, headers, keep_alive))
            if not keep_alive:
                cycle.keep_alive = False
                if not cycle.more_body:
                    self.transport.close()
                # else: the rest of the body is read and dropped, then the connection
                # closes (on_message_complete), so the client gets to read this answer.
        cycle.message_event.set()
        cycle.on_response()


def http_protocol(
    infer: InferHandler,
    max_body: int,
    admit: Callable[[Scope], Grant] | None = None,
    header_timeout_s: float = 30.0,
    body_timeout_s: float = 60.0,
) -> type[asyncio.Protocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``; ``admit`` checks API keys;
    a request's headers must arrive within ``header_timeout_s``, and its body may pause
    at most ``body_timeout_s``."""
    attributes = {
        "infer": infer, "max_body": max_body, "admit": admit,
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
        "_slow_watch": None,
    }  # fmt: skip
    return type("InferHttpProtocol", (_FastInferProtocol,), attributes)
