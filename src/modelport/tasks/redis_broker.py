"""The Redis :class:`~modelport.tasks.broker.Broker`: one stream per container model,
shared by the workers hosting it through the consumer group ``workers``.

``enqueue`` is ``XADD``; ``claim`` first takes over deliveries whose visibility timeout
ran out (``XAUTOCLAIM``: their worker died, or stopped extending them), then waits for
new ones (``XREADGROUP``); ``extend`` resets a delivery's idle time (``XCLAIM`` by its
own consumer); ``ack`` is ``XACK`` + ``XDEL``; ``nack`` queues the task id again. A
delivery counts as expired when it has been idle longer than the claiming worker's
``visibility_s``, so every worker of a cluster uses the same one (the setting). A
worker claims only from the streams of the models it hosts (``models``). Redis must
keep its data (``appendonly yes``) for queued work to survive a Redis restart; the task
store is the record either way, and ``modelport serve`` queues again every task the
store says is queued when it starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.asyncio import Redis

from modelport.cluster.keys import GROUP, RedisKeys
from modelport.cluster.streams import ensure_group, reclaim
from modelport.tasks.broker import Delivery

log = logging.getLogger("modelport.tasks")

_SEP = "\x1f"


class RedisBroker:
    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        models: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.client, self.keys, self.models = client, keys, models
        self._grouped: set[str] = set()
        self._away = False  # Redis unreachable at the last claim (logged once)

    async def enqueue(self, task_id: str, model: str = "") -> None:
        await self.client.xadd(self.keys.task_stream(model), {"task": task_id})

    async def _streams(self) -> list[str]:
        streams = [self.keys.task_stream(m) for m in sorted(set(self.models()))]
        for stream in streams:
            if stream not in self._grouped:
                await ensure_group(self.client, stream)
                self._grouped.add(stream)
        return streams

    async def claim(self, consumer: str, visibility_s: float, wait_s: float) -> Delivery | None:
        try:
            delivery = await self._claim(consumer, visibility_s, wait_s)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._grouped.clear()  # Redis lost its data (a restart): make the groups again
            return None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if not self._away:
                log.warning("Redis is not reachable (%s); waiting for it to take tasks", exc)
                self._away = True
            self._grouped.clear()
            await asyncio.sleep(max(wait_s, 1.0))
            return None
        if self._away:
            log.info("Redis answers again; taking tasks")
            self._away = False
        return delivery

    async def _claim(self, consumer: str, visibility_s: float, wait_s: float) -> Delivery | None:
        streams = await self._streams()
        if not streams:
            await asyncio.sleep(wait_s)
            return None
        for stream in streams:
            claimed = await reclaim(self.client, stream, consumer, visibility_s, 1)
            if claimed:
                mid, fields, times = claimed[0]
                return self._delivery(stream, mid, fields, consumer=consumer, times=times)
        got: Any = await self.client.xreadgroup(
            GROUP, consumer, dict.fromkeys(streams, ">"), count=1, block=max(1, int(wait_s * 1000))
        )
        for stream_name, entries in got or []:
            for mid, fields in entries:
                stream = stream_name.decode() if isinstance(stream_name, bytes) else stream_name
                return self._delivery(stream, mid, fields, consumer=consumer, times=1)
        return None

    @staticmethod
    def _delivery(stream: str, mid: Any, fields: Any, *, consumer: str, times: int) -> Delivery:
        task = fields.get(b"task") or fields.get("task") or b""
        task_id = task.decode() if isinstance(task, bytes) else str(task)
        message = mid.decode() if isinstance(mid, bytes) else str(mid)
        return Delivery(task_id, _SEP.join((stream, message, consumer)), times)

    async def extend(self, delivery: Delivery, visibility_s: float) -> None:
        stream, message, consumer = delivery.delivery_id.split(_SEP)
        await self.client.xclaim(stream, GROUP, consumer, 0, [message], justid=True)

    async def ack(self, delivery: Delivery) -> None:
        stream, message, _ = delivery.delivery_id.split(_SEP)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(stream, GROUP, message)
            pipe.xdel(stream, message)
            await pipe.execute()

    async def nack(self, delivery: Delivery) -> None:
        stream, message, _ = delivery.delivery_id.split(_SEP)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, {"task": delivery.task_id})
            pipe.xack(stream, GROUP, message)
            pipe.xdel(stream, message)
            await pipe.execute()

    async def backlog(self, model: str) -> int:
        # Acked entries are deleted, so the stream holds what waits or runs.
        return int(await self.client.xlen(self.keys.task_stream(model)))

    async def ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        pass  # the client belongs to whoever made it
