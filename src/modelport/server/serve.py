"""``modelport serve``: one server process, from Settings to serving until SIGTERM.

The parts come from ``build.py``; this module starts them in order (HTTP and gRPC first,
so health answers while models load) and stops them, through one exit stack, in the
reverse of the order that keeps requests safe: the listeners stop before the models and
tasks they call close.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from modelport.api.grpc.server import STOP_GRACE_S, start_grpc_server
from modelport.api.http.app import create_app
from modelport.api.http.auth import AuthMiddleware, RouteNeed, route_need
from modelport.api.http.config import Listener
from modelport.api.http.cors import allow_origins
from modelport.api.http.fastpath import FastPathConfig, http_protocol
from modelport.api.http.health import HealthSources
from modelport.api.http.metrics_paths import MetricsPath
from modelport.api.http.v2 import InferHandler
from modelport.api.peer import peer_app
from modelport.core.repositories import SourceChain, WatchedFolders
from modelport.core.service import InferenceService
from modelport.core.watcher import RepositoryWatcher
from modelport.observability.gpus import Nvml
from modelport.observability.metrics import metrics_registry, setup_logging
from modelport.observability.task_metrics import TaskMetrics
from modelport.observability.tracing import start_tracing
from modelport.observability.upstream_metrics import tfserving_metrics, triton_metrics
from modelport.security.access import Guard, Need
from modelport.security.tls import load_tls
from modelport.server.build import (
    GIL_SWITCH_SECONDS,
    build_ablinfer_sessions,
    build_guard,
    build_service,
    build_task_service,
    claim_data_dir,
    listener_access,
    pull_repository,
    server_node,
    task_routes,
)
from modelport.server.cluster import connect
from modelport.server.listeners import (
    ListenerParts,
    QuietServer,
    compat_addresses,
    run_in_stack,
    start_compat_listeners,
    start_metrics_port,
)
from modelport.server.peers import ProcessInfo, SocketPeers, reuseport_socket
from modelport.server.repository import build_repository, open_models, poll_interval
from modelport.settings import Settings, admin_refusal, is_loopback
from modelport.supply.pull import PullingWatcher, is_url
from modelport.supply.tfserving_config import read_monitoring_path

log = logging.getLogger("modelport")


class Drain:
    """SIGTERM's grace period (``drain_seconds``): from :meth:`begin`, health says not
    ready (HTTP 503, gRPC NOT_SERVING) while every listener keeps answering, new
    connections included, until load balancers have noticed; then the server stops."""

    def __init__(self, service: InferenceService, seconds: float) -> None:
        self.service, self.seconds = service, seconds
        self.until: float | None = None

    def begin(self) -> bool:
        """Start draining; False when there is nothing to wait for (``drain_seconds``
        0, or a drain already begun: a second SIGTERM stops at once)."""
        self.service.drain()
        if self.until is not None or self.seconds <= 0:
            return False
        self.until = time.monotonic() + self.seconds
        return True

    def over(self) -> bool:
        return self.until is not None and time.monotonic() >= self.until


class _Server(uvicorn.Server):
    """The main listener, which handles the signals.

    SIGTERM drains first (:class:`Drain`), then stops; SIGINT stops at once (health says
    not ready either way). Stopping closes the listener and lets the requests in flight
    finish (up to ``timeout_graceful_shutdown``); :func:`serve` then stops the rest.
    uvicorn raises a caught signal again once it has stopped, which would end the
    process before :func:`serve` closes the models and hands tasks back: here the signal
    only stops it."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain.begin():
            log.info(
                "SIGTERM: draining for %g s (health says not ready, requests are answered)",
                self.drain.seconds,
            )
            return  # serving on until on_tick sees the drain over
        self.drain.service.drain()
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self.drain.over() and not self.should_exit:
            log.info("drained for %g s; stopping", self.drain.seconds)
            self.should_exit = True
        return await super().on_tick(counter)


def _warn_when_open(settings: Settings, guard: Guard | None) -> None:
    """One line saying what anyone who reaches a server without keys can do."""
    if is_loopback(settings.host) or (guard is not None and guard.enforcing):
        return
    can = ["run every model (inference)"]
    if settings.tasks_open:
        can.append("run the container models (tasks_open)")
    if not admin_refusal(settings, keys_enforced=False):
        can.append("load, unload and post models (admin = on)")
    log.warning(
        "modelport listens on %s without API keys: anyone who reaches it can %s; "
        "create keys (modelport keys create) to ask for them",
        settings.host,
        ", ".join(can),
    )


def main_route_need(settings: Settings, monitoring: str) -> RouteNeed:
    """What a request to the main port needs: modelport's routes, and TF Serving's
    monitoring path (``monitoring``, "" for none) as its /metrics."""
    prefix = settings.compat_inference_server.rstrip("/")

    def need(method: str, path: str) -> Need:
        if monitoring and path == monitoring:
            return "metrics"
        return route_need(method, path, prefix)

    return need


def served_listeners(settings: Settings, *, tls: bool) -> list[Listener]:
    """The addresses this server answers on, as ``GET /api/v1/config`` lists them."""
    main = f"{settings.host}:{settings.port}"
    listeners = [
        Listener(
            name="http",
            address=main,
            protocols=("kserve-v2", "tfserving-rest", "predictor", "tasks", "web"),
            tls=tls,
        )
    ]
    if settings.compat_inference_server:
        listeners.append(
            Listener(
                name="inference-server",
                address=main,
                protocols=("inference-server",),
                tls=tls,
                path=settings.compat_inference_server,
            )
        )
    if settings.grpc_port:
        listeners.append(
            Listener(
                name="grpc",
                address=f"{settings.host}:{settings.grpc_port}",
                protocols=("kserve-v2", "tfserving", "grpc-health"),
                tls=tls,
            )
        )
    # The --compat listeners: each one upstream API at the root of an address of its own.
    listeners.extend(
        Listener(
            name=address.name,
            address=f"{address.host}:{address.port}",
            protocols=(address.name,),
            tls=tls,
        )
        for address in compat_addresses(settings)
    )
    return listeners


async def serve(
    settings: Settings,
    on_ready: Callable[[InferenceService], None] | None = None,
    process: ProcessInfo | None = None,
    *,
    tracer_provider: Any = None,
) -> None:
    """Serve until SIGINT or SIGTERM; models load while the server already answers health.
    ``tracer_provider``: an OpenTelemetry TracerProvider to send spans through, in place
    of the one ``otel_endpoint`` makes (embedding; the tracing tests' in-memory
    exporter)."""
    setup_logging(settings.log_level, settings.log_format)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    # Checked before anything starts: a TlsError or KeyFileError stops serve here.
    tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    guard = build_guard(settings)
    compat_addresses(settings)  # a ListenError (an unknown API) stops serve here too
    # TF Serving's monitoring path ("" : none); a SettingsError stops serve here too.
    monitoring = (
        read_monitoring_path(Path(settings.monitoring_config_file))
        if settings.monitoring_config_file
        else ""
    )
    _warn_when_open(settings, guard)
    nvml = Nvml.open()  # GPUs for placement and metrics; unavailable without a driver
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(log.info, "modelport stopped")
        stack.callback(os.umask, claim_data_dir(settings))
        tracer = start_tracing(
            settings.otel_endpoint, service_name=settings.server_name, provider=tracer_provider
        )
        if tracer is not None:  # closed last: it flushes the spans of everything else
            stack.callback(tracer.close)
        cluster = connect(settings) if settings.broker else None
        if cluster is not None:
            stack.push_async_callback(cluster.close)
        local = build_repository(settings)
        # With a broker, the repository also lists the models other workers host.
        gateway = cluster.repository(local) if cluster else None
        peers = SocketPeers(process) if process is not None else None
        service = build_service(
            settings,
            nvml=nvml,
            repository=gateway if gateway is not None else local,
            extra_runtimes=cluster.runtimes(settings) if cluster else None,
            peers=peers,
            tracer=tracer,
        )
        stack.push_async_callback(service.close)
        primary = process is None or process.primary
        tasks = build_task_service(
            settings,
            cluster=cluster,
            primary=primary,
            # Several processes, one in-process broker each: the first adopts the others' tasks.
            adopt=process is not None and process.count > 1 and primary and cluster is None,
            tracer=tracer,
        )
        stack.push_async_callback(tasks.close)
        # ABLInfer's sessions run as tasks: built when its listener or specs are asked for.
        ablinfer = None
        if settings.ablinfer_models or any(c.name == "ablinfer" for c in settings.compat):
            ablinfer = build_ablinfer_sessions(settings, tasks)
            stack.push_async_callback(ablinfer.close)
        metrics = metrics_registry(service, nvml)
        metrics.register(TaskMetrics(tasks))
        _, asgi = create_app(
            service,
            metrics=metrics,
            max_body=settings.max_request_bytes,
            tasks=task_routes(settings, tasks, cluster),
            metrics_text=functools.partial(peers.metrics, metrics) if peers is not None else None,
            listeners=served_listeners(settings, tls=tls is not None),
            health=HealthSources(
                tasks=tasks, shared_broker=bool(settings.broker), data_dir=Path(settings.data_dir)
            ),
        )
        if monitoring:
            asgi = MetricsPath(asgi, path=monitoring, render=lambda: tfserving_metrics(service))
        admit = None
        if guard is not None:
            asgi = AuthMiddleware(
                asgi,
                guard,
                listener=listener_access(settings, settings.host),
                need=main_route_need(settings, monitoring),
            )
            admit = asgi.admit
        asgi = allow_origins(asgi, settings.cors_origins)
        if settings.grpc_port:  # 0 turns gRPC off
            grpc_server = await start_grpc_server(
                service,
                host=settings.host,
                port=settings.grpc_port,
                max_message_bytes=settings.grpc_max_message_bytes,
                max_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
                listeners=settings.grpc_listeners,
                guard=guard,
                tls=tls,
                shared_port=process is not None,
                transport=settings.grpc_transport,
                max_idle_s=settings.grpc_max_idle_s,
            )
            stack.push_async_callback(grpc_server.stop, STOP_GRACE_S)
        config = uvicorn.Config(
            asgi,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http=http_protocol(
                InferHandler(service, settings.max_request_bytes),
                FastPathConfig(
                    max_request_bytes=settings.max_request_bytes,
                    admit=admit,
                    header_timeout_s=settings.request_header_timeout_s,
                    body_timeout_s=settings.request_body_timeout_s,
                    cross_origin=bool(settings.cors_origins),
                ),
            ),
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=10,
            **(tls.uvicorn_options() if tls else {}),
        )
        # Several processes: each binds the port with SO_REUSEPORT, and answers its peers
        # on a Unix socket of its own (peers.py).
        sockets = [reuseport_socket(settings.host, settings.port)] if process else None
        drain = Drain(service, settings.drain_seconds)
        serving = await run_in_stack(_Server(config, drain), stack, sockets=sockets)
        parts = ListenerParts(
            settings=settings,
            service=service,
            tasks=tasks,
            cluster=cluster,
            guard=guard,
            tls=tls,
            shared_port=process is not None,
            ablinfer=ablinfer,
        )
        await start_compat_listeners(parts, stack)
        if settings.metrics_port:
            await start_metrics_port(parts, stack, lambda: triton_metrics(service, nvml))
        if process is not None:
            path = process.socket_path(process.index)
            path.unlink(missing_ok=True)
            peer_config = uvicorn.Config(
                peer_app(service, metrics),
                uds=str(path),
                lifespan="off",
                access_log=False,
                log_level="warning",
                loop="none",
            )
            await run_in_stack(QuietServer(peer_config), stack)
        # (With several processes the supervisor pulled before starting them, and only
        # the first pulls again on --poll; the others watch the folder it updates.)
        pulls = is_url(settings.repository) and primary
        if pulls and process is None:
            await pull_repository(settings)  # a PullError stops the server here
        await tasks.start()
        if ablinfer is not None:
            await ablinfer.start()
        await open_models(settings, service, local)
        if cluster is not None:
            node = server_node(cluster, service, tasks, gateway)
            await node.start()
            stack.push_async_callback(node.stop)
        poll_s = poll_interval(settings)
        if poll_s:
            # Models outside the repository's folder are watched where their files are.
            watched = (
                WatchedFolders(service, local) if isinstance(local.extra, SourceChain) else service
            )
            watcher = (
                PullingWatcher(service, poll_s, lambda: pull_repository(settings))
                if pulls
                else RepositoryWatcher(watched, poll_s)
            )
            await watcher.start()
            stack.push_async_callback(watcher.close)
        # Everything alive now (modules, models) lives as long as the server: keep it out
        # of the collector's scans, or each full collection stalls requests for ~50 ms.
        gc.collect()
        gc.freeze()
        if on_ready is not None and not serving.done():
            on_ready(service)
        await serving
