"""``modelport worker``: a node of its own on another host, with no HTTP API.

It hosts the models of its repository (``--models`` picks some), answers online
requests for them from Redis, runs container tasks for them in its slots (one per GPU
with ``--gpus``), keeps task records in the shared store (PostgreSQL) and files in the
shared blob store (S3), and sends heartbeats. Gateways (``modelport serve --broker``)
are where clients connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from modelport.cluster.node import ClusterNode
from modelport.observability.metrics import setup_logging
from modelport.observability.tracing import start_tracing
from modelport.server.build import (
    GIL_SWITCH_SECONDS,
    TaskStorage,
    build_service,
    build_task_worker,
    claim_data_dir,
    pull_repository,
)
from modelport.server.cluster import connect, task_models
from modelport.server.repository import build_repository
from modelport.settings import Settings
from modelport.supply.pull import is_url

log = logging.getLogger("modelport.cluster")


def worker_models(settings: Settings) -> frozenset[str] | None:
    names = frozenset(n.strip() for n in settings.worker_models.split(",") if n.strip())
    return names or None


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, *, tracer_provider: Any = None
) -> None:
    """Host models and take work until SIGTERM or SIGINT (or ``stop`` is set).
    ``tracer_provider``: an OpenTelemetry TracerProvider to send spans through, in place
    of the one ``otel_endpoint`` makes (observability/tracing.py)."""
    setup_logging(settings.log_level, settings.log_format)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cluster = connect(settings)
    if is_url(settings.repository):
        await pull_repository(settings)  # a bucket: the same local copy serve makes
    local = build_repository(settings, worker_models(settings))
    tracer = start_tracing(
        settings.otel_endpoint, service_name=settings.server_name, provider=tracer_provider
    )
    service = build_service(settings, repository=local, tracer=tracer)
    umask = claim_data_dir(settings)
    storage = TaskStorage.open(settings)
    worker = build_task_worker(
        settings,
        storage=storage,
        broker=cluster.broker(local),
        repository=local,
        work_dir=storage.data_dir / "work" / cluster.worker_id,
        name=cluster.worker_id,
        takeover=cluster.may_take_over,
        tracer=tracer,
    )
    node = ClusterNode(
        cluster.client,
        cluster.keys,
        cluster.directory,
        service=service,
        worker_id=cluster.worker_id,
        role="worker",
        task_models=lambda: task_models(local),
        slots=tuple(s.name for s in worker.slots),
        running=lambda: {task: slot.name for task, slot in worker.running.items()},
    )
    async with contextlib.AsyncExitStack() as stack:
        # Stopped in the reverse order: the worker first, the Redis clients last.
        stack.callback(os.umask, umask)
        if tracer is not None:
            stack.callback(tracer.close)
        stack.push_async_callback(cluster.close)
        stack.push_async_callback(asyncio.to_thread, storage.store.close)
        stack.push_async_callback(service.close)
        stack.push_async_callback(node.stop)
        stack.push_async_callback(worker.stop)
        stack.callback(log.info, "worker %s stopping", cluster.worker_id)
        await service.open()
        await node.start()
        if worker.slots:
            await worker.start()
        hosted = [m.name for m in node.info().models]
        log.info(
            "worker %s up: models %s, task models %s, slots %s",
            cluster.worker_id,
            hosted,
            sorted(task_models(local)),
            [s.name for s in worker.slots],
        )
        await stop.wait()
