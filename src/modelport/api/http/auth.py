"""API keys over HTTP: which scope a route needs, and the middleware that asks for it.

:class:`AuthMiddleware` wraps the whole ASGI app (the infer fast path included), so
every route is checked before it runs; ``fastpath.py``'s protocol, which answers infer
requests before any ASGI app, is given :meth:`AuthMiddleware.admit` to check them
with. Failures answer ``{"error": ...}``: 401 with
``WWW-Authenticate: Bearer``, 403 naming the scope needed, 429 with ``Retry-After``,
each with the security headers (``asgi.SECURITY_HEADERS``).
A compat listener's middleware is given its API's own route needs, error shape and
listener rules (``server/listeners.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from modelport.api.http.asgi import (
    SECURITY_HEADERS,
    Answer,
    ASGIApp,
    Receive,
    Scope,
    Send,
    send_answer,
)
from modelport.api.http.errors import error_parts
from modelport.api.http.tasks import PREFIX as TASKS_PREFIX
from modelport.errors import ModelportError
from modelport.security.access import Grant, Guard, Listener, Need

RouteNeed = Callable[[str, str], Need]  # (method, path) -> what the call needs
ErrorParts = Callable[[ModelportError], tuple[int, bytes, list[tuple[bytes, bytes]]]]

HEALTH_PATHS = frozenset(
    {"/v2/health/live", "/v2/health/ready", "/health", "/healthz", "/livez", "/readyz"}
)
PAGE_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico"})
WORKERS_PATH = "/api/workers"
# Loading models, and mapping shared memory (a file of the server's user), are admin.
ADMIN_PATH = re.compile(
    r"^/v2/(?:repository/models/[^/]+/(?:load|unload)"
    r"|systemsharedmemory(?:/region/[^/]+)?/(?:register|unregister))$"
)


def route_need(method: str, path: str, compat_prefix: str = "") -> Need:
    """What a request needs: a scope, or one of the kinds that may be public."""
    if path in HEALTH_PATHS:
        return "health"
    if path == "/metrics":
        return "metrics"
    if path in PAGE_PATHS or path.startswith(("/web/", "/docs/")):
        return "page"
    if method == "POST" and ADMIN_PATH.match(path):
        return "admin"
    if path in (TASKS_PREFIX, WORKERS_PATH) or path.startswith(TASKS_PREFIX + "/"):
        return "tasks"  # (the workers list names the tasks each runs)
    if compat_prefix and path.startswith(compat_prefix + "/"):
        rest = path[len(compat_prefix) :]
        # The zip-task cluster server's API: posting a model is admin, the rest tasks.
        return "admin" if method == "POST" and rest.startswith("/api/models") else "tasks"
    return "infer"


def authorization(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            return value.decode("latin-1")
    return None


class AuthMiddleware:
    """ASGI middleware: every HTTP request is admitted by the guard before ``app`` runs,
    and its place under the key's limit is held until the response has been sent."""

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        *,
        compat_prefix: str = "",
        listener: Listener | None = None,
        need: RouteNeed | None = None,
        errors: ErrorParts = error_parts,
    ) -> None:
        """``need``: what a route needs (default: modelport's routes, the compat API under
        ``compat_prefix``); ``listener``: its rules (default: the main port's);
        ``errors``: the status, body and headers a refusal answers with."""
        self.app = app
        self.guard = guard
        self.listener = listener
        prefix = compat_prefix.rstrip("/")
        self.need = need or (lambda method, path: route_need(method, path, prefix))
        self.errors = errors

    def admit(self, scope: Scope) -> Grant:
        """Admit one HTTP request (its scope as ASGI has it) or raise a ModelportError."""
        need = self.need(scope["method"], scope["path"])
        return self.guard.admit(need, authorization(scope["headers"]), self.listener)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            grant = self.admit(scope)
        except ModelportError as exc:
            # Answered before the app, whose middleware adds the security headers to
            # every other answer: added here.
            status, body, headers = self.errors(exc)
            await send_answer(send, Answer(status, body, [*headers, *SECURITY_HEADERS]))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            grant.release()
