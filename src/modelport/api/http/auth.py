"""API keys over HTTP: which scope a route needs, and the middleware that asks for it.

:class:`AuthMiddleware` wraps the whole ASGI app (the infer fast path included), so
every route is checked before it runs; ``fastpath.py``'s protocol, which answers infer
requests before any ASGI app, is given :meth:`AuthMiddleware.admit` to check them
with. Failures answer ``{"error": ...}``: 401 with
``WWW-Authenticate: Bearer``, 403 naming the scope needed, 429 with ``Retry-After``.
"""

from __future__ import annotations

import re

from modelport.api.http.asgi import Answer, ASGIApp, Receive, Scope, Send, send_answer
from modelport.api.http.tasks import PREFIX as TASKS_PREFIX
from modelport.errors import ModelportError
from modelport.security.access import Grant, Guard, Need

HEALTH_PATHS = frozenset(
    {"/v2/health/live", "/v2/health/ready", "/health", "/healthz", "/livez", "/readyz"}
)
PAGE_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico"})
WORKERS_PATH = "/api/workers"
ADMIN_PATH = re.compile(r"^/v2/repository/models/[^/]+/(?:load|unload)$")


def route_need(method: str, path: str, compat_prefix: str = "") -> Need:
    """What a request needs: a scope, or one of the kinds that may be public."""
    if path in HEALTH_PATHS:
        return "health"
    if path == "/metrics":
        return "metrics"
    if path in PAGE_PATHS or path.startswith("/web/"):
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

    def __init__(self, app: ASGIApp, guard: Guard, compat_prefix: str = "") -> None:
        self.app = app
        self.guard = guard
        self.compat_prefix = compat_prefix.rstrip("/")

    def admit(self, scope: Scope) -> Grant:
        """Admit one HTTP request (its scope as ASGI has it) or raise a ModelportError."""
        need = route_need(scope["method"], scope["path"], self.compat_prefix)
        return self.guard.admit(need, authorization(scope["headers"]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            grant = self.admit(scope)
        except ModelportError as exc:
            await send_answer(send, Answer.of_error(exc))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            grant.release()
