"""Scale-out wiring: the Redis parts of ``modelport serve --broker redis://...`` and the
whole of ``modelport worker``. Like app.py, this is a place that knows concrete classes.

A worker hosts the models of its repository (``--models`` picks some), answers online
requests for them from Redis, runs container tasks for them in its slots (one per GPU
with ``--gpus``), keeps task records in the shared store (PostgreSQL) and files in the
shared blob store (S3), and sends heartbeats. It has no HTTP API: gateways
(``modelport serve --broker``) are where clients connect.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from modelport.cluster.directory import Directory
from modelport.cluster.gateway import CLUSTER_RUNTIME, ClusterRepository, ClusterRuntime
from modelport.cluster.keys import RedisKeys
from modelport.cluster.node import ClusterNode, default_worker_id
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.core.service import InferenceService
from modelport.errors import ModelportError, ModelUnavailable
from modelport.observability import setup_logging
from modelport.runtimes.container import ContainerRuntime
from modelport.settings import Settings
from modelport.tasks.archives import ZipLimits
from modelport.tasks.blobs import BlobStore
from modelport.tasks.redis_broker import RedisBroker
from modelport.tasks.service import TaskService
from modelport.tasks.store import TaskStore, sqlite_url
from modelport.tasks.worker import TaskWorker, make_slots

log = logging.getLogger("modelport.cluster")

# Blocking reads wait at most ~1 s, so a read timeout of 10 s only catches a dead link.
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Cluster:
    """The Redis connections and the directory of one node."""

    client: redis.asyncio.Redis
    sync_client: redis.Redis
    keys: RedisKeys
    directory: Directory
    worker_id: str

    async def may_take_over(self, task_id: str) -> bool:
        """A running task came back to this node after its claim ran out: restart it only
        if no live node says it runs it (read fresh from Redis)."""
        await self.directory.read()
        return not self.directory.running_elsewhere(task_id, self.worker_id)

    def runtime(self, settings: Settings) -> RuntimeFactory:
        """The factory of ``runtime: cluster`` (models other workers host)."""
        return functools.partial(
            ClusterRuntime, client=self.sync_client, keys=self.keys,
            directory=self.directory, timeout_s=settings.cluster_timeout_seconds,
        )  # fmt: skip

    async def list_workers(self) -> list[dict[str, Any]]:
        """The live nodes, for ``GET /api/workers``."""
        try:
            return [w.to_json() for w in await self.directory.read()]
        except (redis.RedisError, OSError) as exc:
            raise ModelUnavailable(f"Redis ({self.keys.prefix}) is not reachable: {exc}") from None

    def runtimes(self, settings: Settings) -> dict[str, RuntimeFactory]:
        return {CLUSTER_RUNTIME: self.runtime(settings)}

    def repository(self, local: ModelRepository) -> ClusterRepository:
        return ClusterRepository(local, self.directory, self.worker_id)

    def broker(self, repository: ModelRepository) -> RedisBroker:
        return RedisBroker(self.client, self.keys, lambda: task_models(repository))

    async def close(self) -> None:
        await self.client.aclose()
        self.sync_client.close()


def connect(settings: Settings) -> Cluster:
    """Clients for ``settings.broker`` (no connection is made until the first command,
    so a node starts while Redis is away)."""
    if not settings.broker.startswith(("redis://", "rediss://", "unix://")):
        raise ModelportError(
            f"broker {settings.broker!r}: expected a Redis URL such as redis://host:6379/0"
        )
    options = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S,
               "health_check_interval": 5}  # fmt: skip
    client = redis.asyncio.from_url(settings.broker, **options)
    sync_client = redis.from_url(settings.broker, **options)
    keys = RedisKeys(settings.redis_prefix)
    worker_id = settings.worker_id or default_worker_id()
    return Cluster(client, sync_client, keys, Directory(client, keys), worker_id)


def task_models(repository: ModelRepository) -> dict[str, tuple[int, ...]]:
    """The container models of a repository and their versions (what tasks it can run)."""
    found = {}
    for name in repository.names():
        try:
            source = repository.source(name)
        except ModelportError:
            continue
        if source.spec.runs_as_tasks:
            found[name] = source.versions
    return found


def server_node(cluster: Cluster, service: InferenceService, tasks: TaskService) -> ClusterNode:
    """The node of ``modelport serve --broker``: it advertises its own models and task
    slots to other gateways, and routes to the models of workers (a gateway)."""
    worker = tasks.worker
    slots = tuple(s.name for s in worker.slots) if worker is not None else ()
    running = worker.running if worker is not None else {}
    return ClusterNode(
        cluster.client, cluster.keys, cluster.directory, service, cluster.worker_id, "server",
        lambda: task_models(tasks.repository), slots,
        lambda: {task: slot.name for task, slot in running.items()},
    )  # fmt: skip


def worker_models(settings: Settings) -> frozenset[str] | None:
    names = frozenset(n.strip() for n in settings.worker_models.split(",") if n.strip())
    return names or None


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """``modelport worker``: host models and take work until SIGTERM or SIGINT."""
    from modelport.app import GIL_SWITCH_SECONDS, build_service, pull_repository, start_service
    from modelport.pull import is_url

    setup_logging(settings.log_level, settings.log_format)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    cluster = connect(settings)
    if is_url(settings.repository):
        await pull_repository(settings)  # a bucket: the same local copy serve makes
    local = ModelRepository(settings.repository_path, worker_models(settings))
    service, caller = build_service(settings, repository=local)
    data = Path(settings.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    store = TaskStore(settings.task_store or sqlite_url(data / "tasks.db"))
    blobs = BlobStore(settings.task_files or str(data / "files"))
    slots = make_slots(settings.task_slots, settings.task_gpu_ids)
    limits = ZipLimits(
        settings.task_max_zip_members, settings.task_max_unpacked_bytes,
        settings.task_max_zip_ratio,
    )  # fmt: skip
    worker = TaskWorker(
        store, blobs, cluster.broker(local), local, ContainerRuntime(), slots,
        data / "work" / cluster.worker_id, limits, settings.task_visibility_seconds,
        cluster.worker_id, settings.task_max_attempts, cluster.may_take_over,
    )  # fmt: skip
    node = ClusterNode(
        cluster.client, cluster.keys, cluster.directory, service, cluster.worker_id, "worker",
        lambda: task_models(local), tuple(s.name for s in slots),
        lambda: {task: slot.name for task, slot in worker.running.items()},
    )  # fmt: skip
    try:
        await start_service(service, caller)
        await node.start()
        if slots:
            await worker.start()
        hosted = [m.name for m in node.info().models]
        log.info("worker %s up: models %s, task models %s, slots %s", cluster.worker_id,
                 hosted, sorted(task_models(local)), [s.name for s in slots])  # fmt: skip
        await stop.wait()
    finally:
        log.info("worker %s stopping", cluster.worker_id)
        await worker.stop()
        await node.stop()
        await service.registry.close()
        await asyncio.to_thread(store.close)
        await cluster.close()
