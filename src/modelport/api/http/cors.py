"""Cross-origin calls from web pages (the ``cors_origins`` setting), by Starlette's
CORSMiddleware: preflight requests are answered, and every answer carries the
``Access-Control-Allow-Origin`` the browser needs to hand it to the page.

It wraps the whole main-port app, outside the API keys' middleware: a browser sends
its preflight without the page's key, and a refusal (401, 403) must still reach the
page with the headers that let it read why. Its answers to preflight requests, which
it sends itself, carry the security headers every other answer carries."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from modelport.api.http.asgi import SECURITY_HEADERS, ASGIApp

# What a page reads besides the simple headers: the id to quote in a report.
EXPOSED_HEADERS = ("x-request-id", "retry-after")


class SecuredCORS(CORSMiddleware):
    """CORSMiddleware whose preflight answers carry :data:`SECURITY_HEADERS`: it answers
    them itself, before the app whose middleware adds them to the rest."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        for key, value in SECURITY_HEADERS:
            response.headers[key.decode()] = value.decode()
        return response


def allow_origins(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    """``app`` answering pages on ``origins`` (``"*"`` for any); ``app`` itself with none."""
    if not origins:
        return app
    return SecuredCORS(
        app,
        allow_origins=list(origins),
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=list(EXPOSED_HEADERS),
        max_age=600,
    )
