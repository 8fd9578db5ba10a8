"""The HTTP listeners of a server process besides its main port: one per compat API,
and the metrics port (``metrics_port``: Triton's metric names, as on tritonserver's).

``--compat inference-server=8123`` serves that upstream API (``COMPAT_APIS``) at the
root of its own address, alone, with the server's TLS, in the same process and event
loop as the main port and over the same core and task queue. Each listener asks the
guard for keys with its API's route needs (a key may come as HTTP Basic auth), unless it
is ``open`` (``compat_open``): then task calls need none, and a warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from modelport.api.http.asgi import ASGIApp, SecurityHeaders
from modelport.api.http.auth import AuthMiddleware
from modelport.api.http.compat import COMPAT_APIS, CompatApi, CompatParts
from modelport.api.http.limits import BodyLimit
from modelport.api.http.metrics_paths import Render, metrics_port_app
from modelport.core.service import InferenceService
from modelport.security.access import Guard
from modelport.security.tls import TlsFiles
from modelport.server.build import listener_access, task_routes
from modelport.server.cluster import Cluster
from modelport.server.peers import reuseport_socket
from modelport.settings import CompatListener, Settings
from modelport.tasks.ablinfer_sessions import AblinferSessions
from modelport.tasks.service import TaskService

log = logging.getLogger("modelport")


class ListenError(Exception):
    """A listener that cannot start: an unknown API, or an address that cannot be bound."""


class QuietServer(uvicorn.Server):
    """A listener beside the main one: the main server handles SIGTERM and SIGINT, this
    one stops with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_in_stack(
    server: uvicorn.Server, stack: contextlib.AsyncExitStack, **options: object
) -> asyncio.Task[None]:
    """Start ``server``; the stack stops it (and waits for it) when it closes."""
    serving = asyncio.create_task(server.serve(**options))  # type: ignore[arg-type]

    async def stop() -> None:
        if not serving.done():
            server.should_exit = True
        await serving

    stack.push_async_callback(stop)
    return serving


@dataclass(frozen=True, slots=True, kw_only=True)
class CompatAddress:
    """A compat listener to start: its API, where, and whether it is open."""

    name: str
    api: CompatApi
    host: str
    port: int
    open: bool

    def url(self, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}/"


def compat_addresses(settings: Settings) -> list[CompatAddress]:
    """The compat listeners the settings ask for; ListenError for an unknown API."""
    known = ", ".join(sorted(COMPAT_APIS))
    for name in settings.compat_open:
        if name not in {c.name for c in settings.compat}:
            raise ListenError(f"compat_open names {name!r}, which no compat listener serves")
    return [_address(settings, listener, known) for listener in settings.compat]


def _address(settings: Settings, listener: CompatListener, known: str) -> CompatAddress:
    api = COMPAT_APIS.get(listener.name)
    if api is None:
        raise ListenError(f"unknown compat API {listener.name!r}; known: {known}")
    return CompatAddress(
        name=listener.name,
        api=api,
        host=listener.host or settings.host,
        port=listener.port,
        open=listener.name in settings.compat_open,
    )


def _bind(what: str, host: str, port: int, shared: bool) -> socket.socket:
    try:
        if shared:  # several server processes: each binds the port (SO_REUSEPORT)
            return reuseport_socket(host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        return sock
    except OSError as exc:
        raise ListenError(
            f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerParts:
    """What every compat listener of a process is built over."""

    settings: Settings
    service: InferenceService
    tasks: TaskService
    cluster: Cluster | None
    guard: Guard | None
    tls: TlsFiles | None
    shared_port: bool
    ablinfer: AblinferSessions | None = None


def compat_app(parts: ListenerParts, address: CompatAddress) -> ASGIApp:
    """The ASGI app of one listener: the API alone, its body limit, its access rules."""
    settings = parts.settings
    routes = task_routes(
        settings, parts.tasks, parts.cluster, host=address.host, open_tasks=address.open
    )
    compat = CompatParts(service=parts.service, tasks=routes, ablinfer=parts.ablinfer)
    app: ASGIApp = address.api.build(compat)
    # Uploads have their own, larger limit (task_max_upload_bytes).
    app = SecurityHeaders(BodyLimit(app, settings.max_request_bytes, address.api.upload_paths))
    if parts.guard is not None:
        access = listener_access(settings, address.host, open_tasks=address.open)
        api = address.api
        app = AuthMiddleware(
            app, parts.guard, listener=access, need=api.route_need, errors=api.errors
        )
    return app


async def start_compat_listeners(
    parts: ListenerParts, stack: contextlib.AsyncExitStack
) -> list[CompatAddress]:
    """Start the listeners ``compat`` asks for; the stack stops them. ListenError when
    one cannot start."""
    addresses = compat_addresses(parts.settings)
    for address in addresses:
        sock = _bind(
            f"compat listener {address.name}", address.host, address.port, parts.shared_port
        )
        config = uvicorn.Config(
            compat_app(parts, address),
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=10,
            **(parts.tls.uvicorn_options() if parts.tls else {}),
        )
        await run_in_stack(QuietServer(config), stack, sockets=[sock])
        log.info(
            "%s (%s) at %s", address.name, address.api.description, address.url(bool(parts.tls))
        )
        if address.open:
            log.warning(
                "compat listener %s on %s:%d is open (compat_open): anyone who reaches it "
                "runs container models without a key",
                address.name,
                address.host,
                address.port,
            )
    return addresses


async def start_metrics_port(
    parts: ListenerParts, stack: contextlib.AsyncExitStack, render: Render
) -> None:
    """The ``metrics_port`` listener: ``GET /metrics`` answers ``render()`` (Triton's
    metric names), asking for a key as the main port's /metrics does; the stack stops
    it. ListenError when it cannot start."""
    settings = parts.settings
    host, port = settings.host, settings.metrics_port
    sock = _bind("metrics port", host, port, parts.shared_port)
    app: ASGIApp = SecurityHeaders(metrics_port_app(render))
    if parts.guard is not None:
        app = AuthMiddleware(
            app,
            parts.guard,
            listener=listener_access(settings, host),
            need=lambda method, path: "metrics",
        )
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=10,
        **(parts.tls.uvicorn_options() if parts.tls else {}),
    )
    await run_in_stack(QuietServer(config), stack, sockets=[sock])
    log.info("metrics (Triton's names) at %s:%d/metrics", host, port)
