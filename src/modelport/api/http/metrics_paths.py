"""Prometheus text where the upstream servers answer it, beside modelport's ``/metrics``:
TF Serving's monitoring path on the main port (:class:`MetricsPath`), and the metrics
port of ``tritonserver`` (:func:`metrics_port_app`). What they answer is rendered by
``observability/upstream_metrics.py``, at each request, on the event loop (where the
counters change)."""

from __future__ import annotations

from collections.abc import Callable

from modelport.api.http.asgi import Answer, ASGIApp, Receive, Scope, Send, send_answer

Render = Callable[[], bytes]
CONTENT_TYPE = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
METRICS_PATH = "/metrics"


async def _answer(scope: Scope, send: Send, render: Render) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        body = b'{"error": "metrics answer GET"}'
        await send_answer(send, Answer(405, body, ((b"allow", b"GET, HEAD"),)))
        return
    await send_answer(send, Answer(200, render(), (CONTENT_TYPE,)))


class MetricsPath:
    """ASGI middleware: GET ``path`` answers ``render()``; every other request goes to
    ``app``."""

    def __init__(self, app: ASGIApp, *, path: str, render: Render) -> None:
        self.app = app
        self.path = path
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await _answer(scope, send, self.render)
            return
        await self.app(scope, receive, send)


def metrics_port_app(render: Render) -> ASGIApp:
    """A listener's app that answers ``GET /metrics`` with ``render()``, and 404."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == METRICS_PATH:
            await _answer(scope, send, render)
            return
        body = b'{"error": "this port answers GET /metrics only"}'
        await send_answer(send, Answer(404, body))

    return app
