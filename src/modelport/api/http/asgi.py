"""The ASGI side of the HTTP adapter: the types its middlewares share, an answer as one
typed value, the one way a middleware sends it, and the request ids.

The middlewares (``auth.py``'s API keys, ``limits.py``'s body limit, the infer fast
path, :class:`TagRequests`) answer some requests themselves, before or instead of the
framework; they all do it through :func:`send_answer`.

Every HTTP request has an id: the client's ``x-request-id``, else one made here. Its
logs carry it (the ``request_id`` context variable) and its answer echoes it in
``x-request-id``. :class:`TagRequests` gives it to the framework's routes; the infer
fast path, which answers before any ASGI app, tags its answers itself with
:func:`request_id_for` and :data:`REQUEST_ID`.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelport.api.http.errors import error_parts
from modelport.errors import ModelportError
from modelport.observability.metrics import request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID = 128
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")
_ids = itertools.count(1)
_PREFIX = uuid.uuid4().hex[:8]


# Sent with every answer, the page's and the API's alike. The CSP is what the built-in page
# and /docs need: their scripts and styles come from the server itself (style-src allows
# inline because both set style attributes), images may be data: or blob: URLs (the
# page shows the picture a user chose); nothing may frame them.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Headers = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request is answered: status, body, and headers besides the length (the
    content type is ``application/json`` unless they name one)."""

    status: int
    body: bytes
    headers: Headers = ()

    @classmethod
    def of_error(cls, exc: ModelportError) -> Answer:
        """A core error as ``api/http/errors.py`` maps it."""
        status, body, headers = error_parts(exc)
        return cls(status, body, headers)


async def send_answer(send: Send, answer: Answer, *, close: bool = False) -> None:
    """Send ``answer`` as an ASGI response; ``close``: and ask the server to close."""
    headers = [(b"content-length", str(len(answer.body)).encode()), *answer.headers]
    if not any(key == b"content-type" for key, _ in answer.headers):
        headers.insert(0, (b"content-type", b"application/json"))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def new_request_id() -> str:
    """Unique per process run, and cheaper than a uuid per request."""
    return f"{_PREFIX}-{next(_ids):x}"


def request_id_for(given: str | None) -> str:
    """A request's id: the one its client gave in ``x-request-id`` when it is short and
    of safe characters, else a new one. It goes into every log line of the request and
    its answer: a newline or 10 KB in it would forge or flood log lines."""
    if given and len(given) <= MAX_REQUEST_ID and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


class TagRequests:
    """ASGI middleware: every HTTP request gets its id, for the logs of whatever handles
    it and in its answer's ``x-request-id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID), b"")
        rid = request_id_for(given.decode("latin-1"))
        request_id.set(rid)
        tag = (REQUEST_ID, rid.encode("latin-1"))

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), tag]
            await send(message)

        await self.app(scope, receive, tagged)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every answer of ``app`` (the infer
    fast path adds them to its own answers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, headed)
