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

from modelport.cluster.consumer import OnlineConsumer, in_flight_for
from modelport.cluster.directory import HEARTBEAT_S, Directory, HostedModel, WorkerInfo
from modelport.cluster.gateway import CLUSTER_RUNTIME, ClusterRepository, hosted_model
from modelport.cluster.keys import RedisKeys
from modelport.core.entries import ModelState
from modelport.core.service import InferenceService, ModelView

log = logging.getLogger("modelport.cluster")

# A remote model no live worker has advertised for this long is dropped from the index.
FORGET_REMOTE_S = 10.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ClusterNode:
    """One node's part in the cluster (see the module docstring).

    ``role``: "worker" or "server"; ``task_models``, ``slots`` and ``running`` say what
    tasks it can run and runs now, for its heartbeat; ``gateway``: the repository that
    lists the models other workers host, which a server loads and routes to (None: it
    routes nowhere).
    """

    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        directory: Directory,
        *,
        service: InferenceService,
        worker_id: str,
        role: str,
        task_models: Callable[[], Mapping[str, tuple[int, ...]]] = dict,
        slots: tuple[str, ...] = (),
        running: Callable[[], Mapping[str, str]] = dict,
        gateway: ClusterRepository | None = None,
    ) -> None:
        self.client, self.keys, self.directory = client, keys, directory
        self.service, self.worker_id, self.role = service, worker_id, role
        self.task_models, self.slots, self.running = task_models, slots, running
        self.gateway = gateway
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
        # Each drains: stops reading, answers what it holds.
        await asyncio.gather(*(consumer.stop() for consumer in self.consumers.values()))
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
            id=self.worker_id,
            role=self.role,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            seen_at=time.time(),
            models=tuple(self._hosted()),
            task_models=dict(self.task_models()),
            slots=self.slots,
            running=dict(self.running()),
        )

    def _local_ready(self) -> list[ModelView]:
        """The models this node hosts itself and serves now (not those it routes to)."""
        return [
            model
            for model in self.service.models()
            if model.spec is not None
            and model.spec.runtime != CLUSTER_RUNTIME
            and model.state is ModelState.READY
            and model.versions
        ]

    def _hosted(self) -> list[HostedModel]:
        return [hosted_model(model) for model in self._local_ready()]

    def _follow_local(self) -> None:
        """An online consumer for each local model that is ready, none for the others."""
        ready = {model.name: model for model in self._local_ready()}
        for name in set(self.consumers) - set(ready):
            consumer = self.consumers.pop(name)
            asyncio.create_task(consumer.stop())  # noqa: RUF006 (it ends on its own)
        for name in set(ready) - set(self.consumers):
            spec = ready[name].spec
            assert spec is not None
            consumer = OnlineConsumer(
                self.client,
                self.keys,
                self.service,
                model=name,
                worker_id=self.worker_id,
                in_flight=in_flight_for(spec),
            )
            consumer.start()
            self.consumers[name] = consumer

    async def _follow_remote(self) -> None:
        """Load the models other workers host (a gateway), reload the ones whose
        description changed, and drop the ones nobody has hosted for a while."""
        if self.gateway is None:
            return
        now = time.monotonic()
        remote = self.gateway.remote_models()
        known = {model.name for model in self.service.models()}
        for name, hosted in remote.items():
            self._remote_seen[name] = now
            if self._remote_described.get(name) != hosted or name not in known:
                self._remote_described[name] = hosted
                await self.service.load_here(name, raise_errors=False)
        routed = {
            model.name
            for model in self.service.models()
            if model.spec is not None and model.spec.runtime == CLUSTER_RUNTIME
        }
        for name, seen in list(self._remote_seen.items()):
            if name not in remote and now - seen > FORGET_REMOTE_S:
                del self._remote_seen[name]
                self._remote_described.pop(name, None)
                if name in routed:
                    await self.service.forget(name)
