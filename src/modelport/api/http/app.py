"""The HTTP application: FastAPI for every route, with a raw ASGI fast path in front
of it for ``POST /v2/models/{m}[/versions/{v}]/infer``.

The fast path reads the body straight from ASGI and answers with the bytes the codec
made, skipping routing, request objects and pydantic; every other route, and the docs,
go through FastAPI. Both call the same :class:`InferHandler`.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from modelport.api.http.v2 import InferHandler, build_router
from modelport.core.service import InferenceService
from modelport.observability import request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("modelport.http")
_ids = itertools.count(1)
_PREFIX = uuid.uuid4().hex[:8]


def _new_request_id() -> str:
    """Unique per process run, and cheaper than a uuid per request."""
    return f"{_PREFIX}-{next(_ids):x}"


_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class InferFastPath:
    """ASGI middleware answering v2 infer requests itself; the rest goes to ``app``."""

    def __init__(self, app: ASGIApp, infer: InferHandler, max_body: int) -> None:
        self.app = app
        self.infer = infer
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.match(scope["path"])
            if match is not None:
                await self._infer(match.group(1), match.group(2) or "", scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(
        self, model: str, version: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id") or _new_request_id()
        request_id.set(rid)
        body = await self._read_body(headers, receive)
        if body is None:
            message = (
                f"request body is over the limit of {self.max_body} bytes "
                "(max_request_bytes); send smaller batches or raise the limit"
            )
            await _send(send, 413, orjson.dumps({"error": message}), [])
            return
        status, out, extra = await self.infer(model, version, body, headers)
        if status >= 500:
            log.warning("infer %s failed with %d: %s", model, status, out[:300])
        extra.append((b"x-request-id", rid.encode()))
        await _send(send, status, out, extra)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return None
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body if len(body) <= self.max_body else None
        parts = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
        return b"".join(parts)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    if not any(k == b"content-type" for k, _ in headers):
        headers = [(b"content-type", b"application/json"), *headers]
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def create_app(
    service: InferenceService, metrics: CollectorRegistry, max_body: int
) -> tuple[FastAPI, ASGIApp]:
    """The FastAPI app (for tests that want it) and the ASGI app to serve."""
    app = FastAPI(
        title="modelport",
        version=service.version,
        description="KServe v2 inference, a model repository, metrics.",
        docs_url="/docs",
    )
    app.include_router(build_router(service))

    @app.middleware("http")
    async def tag_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or _new_request_id()
        request_id.set(rid)
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        return response

    @app.get("/metrics", tags=["observability"], summary="Prometheus metrics")
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    return app, InferFastPath(app, InferHandler(service), max_body)
