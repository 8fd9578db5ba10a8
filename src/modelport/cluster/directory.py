"""Who is out there: workers' heartbeats in Redis, and a snapshot of them in memory.

Every node (``modelport worker``, and ``modelport serve`` with a Redis broker) writes a
heartbeat every ``HEARTBEAT_S``: what it hosts (online models with their signatures,
container models, task slots) and the tasks it is running. The heartbeat key expires
after ``ttl_s``, so a node killed with ``kill -9`` drops out of the directory on its own.
Gateways read the directory to route requests for models they do not host, and to fail
those requests fast once no live worker hosts the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from modelport.cluster.keys import RedisKeys

log = logging.getLogger("modelport.cluster")

HEARTBEAT_S = 1.0
TTL_S = 3.0
FORGET_S = 3600.0  # drop ids of workers silent this long from the sorted set


@dataclass(frozen=True, slots=True, kw_only=True)
class HostedModel:
    """An online model a worker serves, as gateways need it to route and validate."""

    name: str
    versions: tuple[int, ...]
    max_batch_size: int
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    platform: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "max_batch_size": self.max_batch_size,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "platform": self.platform,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostedModel:
        return cls(
            name=str(data["name"]),
            versions=tuple(int(v) for v in data.get("versions", ())),
            max_batch_size=int(data.get("max_batch_size", 0)),
            inputs=tuple(data.get("inputs", ())),
            outputs=tuple(data.get("outputs", ())),
            platform=str(data.get("platform", "")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """One node's heartbeat."""

    id: str
    role: str  # "worker" or "server"
    host: str
    pid: int
    started_at: float
    seen_at: float
    models: tuple[HostedModel, ...] = ()
    task_models: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> versions
    slots: tuple[str, ...] = ()
    running: dict[str, str] = field(default_factory=dict)  # task id -> slot

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "seen_at": self.seen_at,
            "models": [m.to_json() for m in self.models],
            "task_models": {k: list(v) for k, v in self.task_models.items()},
            "slots": list(self.slots),
            "running": dict(self.running),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerInfo:
        return cls(
            id=str(data["id"]),
            role=str(data.get("role", "worker")),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            started_at=float(data.get("started_at", 0)),
            seen_at=float(data.get("seen_at", 0)),
            models=tuple(HostedModel.from_json(m) for m in data.get("models", ())),
            task_models={k: tuple(v) for k, v in dict(data.get("task_models") or {}).items()},
            slots=tuple(data.get("slots", ())),
            running=dict(data.get("running", {})),
        )


class Directory:
    """Reads and writes heartbeats; ``snapshot`` is the last read, for sync readers
    (gateway threads) to look at without touching Redis."""

    def __init__(self, redis: Redis, keys: RedisKeys, ttl_s: float = TTL_S) -> None:
        self.redis, self.keys, self.ttl_s = redis, keys, ttl_s
        self.snapshot: tuple[WorkerInfo, ...] = ()
        self.snapshot_at = 0.0  # time.monotonic() of the last successful read

    async def beat(self, info: WorkerInfo) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            heartbeat = orjson.dumps(info.to_json())
            pipe.set(self.keys.worker(info.id), heartbeat, px=int(self.ttl_s * 1000))
            pipe.zadd(self.keys.workers, {info.id: now})
            pipe.zremrangebyscore(self.keys.workers, 0, now - FORGET_S)
            await pipe.execute()

    async def leave(self, worker_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.worker(worker_id))
            pipe.zrem(self.keys.workers, worker_id)
            await pipe.execute()

    async def read(self) -> tuple[WorkerInfo, ...]:
        """The live workers (heartbeat not expired), and keep them as the snapshot."""
        ids = await self.redis.zrangebyscore(self.keys.workers, time.time() - self.ttl_s, "+inf")
        found: list[WorkerInfo] = []
        if ids:
            names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
            for raw in await self.redis.mget([self.keys.worker(n) for n in names]):
                if raw:
                    found.append(WorkerInfo.from_json(orjson.loads(raw)))
        self.snapshot = tuple(sorted(found, key=lambda w: w.id))
        self.snapshot_at = time.monotonic()
        return self.snapshot

    def hosts(self, model: str) -> list[WorkerInfo]:
        """Live workers (in the snapshot) that serve ``model`` online."""
        return [w for w in self.snapshot if any(m.name == model for m in w.models)]

    def hosted_models(self, exclude: str = "") -> dict[str, HostedModel]:
        """Every online model some live worker (other than ``exclude``) serves; when two
        workers describe a model differently, the one seen last wins."""
        models: dict[str, HostedModel] = {}
        for worker in sorted(self.snapshot, key=lambda w: w.seen_at):
            if worker.id != exclude:
                models.update({m.name: m for m in worker.models})
        return models

    def task_versions(self, model: str) -> set[int]:
        """The versions of container model ``model`` that live workers host."""
        return {v for w in self.snapshot for v in w.task_models.get(model, ())}

    def running_elsewhere(self, task_id: str, me: str) -> bool:
        return any(task_id in w.running for w in self.snapshot if w.id != me)
