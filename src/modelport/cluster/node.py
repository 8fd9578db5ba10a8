"""A node of a cluster: heartbeats, online consumers for the models it hosts, and (for a
gateway) the remote models it routes to.

``modelport worker`` runs one with role "worker"; ``modelport serve --broker redis://``
runs one with role "server", which is also a gateway. Redis being away never stops a
node: the loop logs it once, keeps the local models serving, and carries on when Redis
answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import redis
from redis.asyncio import Redis

from modelport.cluster.consumer import OnlineConsumer
from modelport.cluster.directory import HEARTBEAT_S, Directory, HostedModel, WorkerInfo
from modelport.cluster.gateway import CLUSTER_RUNTIME, ClusterRepository, hosted_model
from modelport.cluster.keys import RedisKeys
from modelport.core.registry import ModelState
from modelport.core.service import InferenceService, platform_of

log = logging.getLogger("modelport.cluster")

# A remote model no live worker has advertised for this long is dropped from the index.
FORGET_REMOTE_S = 10.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ClusterNode:
    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        directory: Directory,
        service: InferenceService,
        worker_id: str,
        role: str,
        task_models: Callable[[], Mapping[str, tuple[int, ...]]] = dict,
        slots: tuple[str, ...] = (),
        running: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.client, self.keys, self.directory = client, keys, directory
        self.service, self.worker_id, self.role = service, worker_id, role
        self.task_models, self.slots, self.running = task_models, slots, running
        self.started_at = time.time()
        self.consumers: dict[str, OnlineConsumer] = {}
        self._remote_seen: dict[str, float] = {}
        self._remote_described: dict[str, HostedModel] = {}
        self._loop: asyncio.Task[None] | None = None
        self._redis_down = False

    async def start(self) -> None:
        await self.tick()
        self._loop = asyncio.create_task(self._run(), name="cluster-node")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        for consumer in self.consumers.values():
            await consumer.stop()
        self.consumers.clear()
        with contextlib.suppress(redis.RedisError, OSError):
            await self.directory.leave(self.worker_id)

    async def takeover(self, task_id: str) -> bool:
        """May this node restart a running task whose claim ran out? Only if no live
        node says it runs it (read fresh from Redis)."""
        await self.directory.read()
        return not self.directory.running_elsewhere(task_id, self.worker_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self.tick()

    async def tick(self) -> None:
        """One heartbeat: say what this node hosts, read the others, follow changes."""
        try:
            await self.directory.beat(self.info())
            await self.directory.read()
            if self._redis_down:
                log.info("Redis answers again")
                self._redis_down = False
        except (redis.RedisError, OSError) as exc:
            if not self._redis_down:
                log.warning("Redis is not reachable (%s); local models keep serving", exc)
                self._redis_down = True
            return
        self._follow_local()
        await self._follow_remote()

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            self.worker_id, self.role, socket.gethostname(), os.getpid(), self.started_at,
            time.time(), tuple(self._hosted()), dict(self.task_models()), self.slots,
            dict(self.running()),
        )  # fmt: skip

    def _hosted(self) -> list[HostedModel]:
        hosted = []
        for name, entry in sorted(self.service.registry.entries.items()):
            spec = entry.spec
            if spec is None or spec.runtime == CLUSTER_RUNTIME or not entry.versions:
                continue
            if entry.state is not ModelState.READY or entry.latest is None:
                continue
            latest = entry.latest
            platform = platform_of(spec)
            versions = tuple(sorted(entry.versions))
            hosted.append(hosted_model(name, versions, spec, latest.signature, platform))
        return hosted

    def _follow_local(self) -> None:
        """An online consumer for each local model that is ready, none for the others."""
        ready = {m.name for m in self._hosted()}
        for name in set(self.consumers) - ready:
            consumer = self.consumers.pop(name)
            asyncio.create_task(consumer.stop())  # noqa: RUF006 (it ends on its own)
        for name in ready - set(self.consumers):
            entry = self.service.registry.entries[name]
            assert entry.spec is not None
            consumer = OnlineConsumer(
                self.client, self.keys, self.service, name, self.worker_id,
                entry.spec.max_batch_size, entry.spec.instances.count,
            )  # fmt: skip
            consumer.start()
            self.consumers[name] = consumer

    async def _follow_remote(self) -> None:
        """Load the models other workers host (a gateway), reload the ones whose
        description changed, and drop the ones nobody has hosted for a while."""
        repository = self.service.registry.repository
        if not isinstance(repository, ClusterRepository):
            return
        now = time.monotonic()
        remote = repository.remote_models()
        registry = self.service.registry
        for name, hosted in remote.items():
            self._remote_seen[name] = now
            if self._remote_described.get(name) != hosted or name not in registry.entries:
                self._remote_described[name] = hosted
                await registry.load(name, raise_errors=False)
        for name, seen in list(self._remote_seen.items()):
            if name not in remote and now - seen > FORGET_REMOTE_S:
                del self._remote_seen[name]
                self._remote_described.pop(name, None)
                entry = registry.entries.get(name)
                if entry is not None and entry.spec and entry.spec.runtime == CLUSTER_RUNTIME:
                    await registry.remove(name)
