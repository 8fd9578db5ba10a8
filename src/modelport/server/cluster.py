"""Scale-out wiring: the Redis parts that ``modelport serve --broker redis://...`` and
``modelport worker`` (``worker.py``) share.

A worker hosts the models of its repository (``--models`` picks some), answers online
requests for them from Redis, runs container tasks for them in its slots (one per GPU
with ``--gpus``), keeps task records in the shared store (PostgreSQL) and files in the
shared blob store (S3), and sends heartbeats. It has no HTTP API: gateways
(``modelport serve --broker``) are where clients connect.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from modelport.cluster.directory import Directory
from modelport.cluster.gateway import CLUSTER_RUNTIME, ClusterRepository, ClusterRuntime
from modelport.cluster.keys import RedisKeys
from modelport.cluster.node import default_worker_id
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.errors import ModelportError, ModelUnavailable
from modelport.settings import Settings
from modelport.tasks.redis_broker import RedisBroker

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
            ClusterRuntime,
            client=self.sync_client,
            keys=self.keys,
            directory=self.directory,
            timeout_s=settings.cluster_timeout_seconds,
        )

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
    options = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 5,
    }
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
