"""The worker half of the online path: take requests from a model's stream, answer them.

Each of ``loops`` consumers reads up to ``max_batch_size`` requests at once from the
model's stream (the consumer group shares it among every worker hosting the model),
runs them through the local :class:`InferenceService` (whose batcher merges them), and
pushes each answer to the list the gateway waits on. Requests a dead worker had read
and never acknowledged are claimed after ``reclaim_s`` and run once more; a request
delivered a third time is answered with an error instead (two workers died with it).
Requests whose gateway has given up (past their deadline) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis
from redis.asyncio import Redis

from modelport.cluster import wire
from modelport.cluster.keys import GROUP, RedisKeys
from modelport.cluster.streams import ensure_group, reclaim
from modelport.core.service import InferenceService
from modelport.core.tracing import RequestSpan
from modelport.errors import ErrorKind, ModelportError, ModelUnavailable
from modelport.tensors import InferenceRequest, Tensor, datatype_of

log = logging.getLogger("modelport.cluster")

RECLAIM_S = 3.0
REPLY_TTL_S = 120
BLOCK_MS = 1000
MAX_DELIVERIES = 2
# The errors a request's span counts as the server's own failure.
SERVER_FAULTS = frozenset({ErrorKind.INTERNAL, ErrorKind.UNAVAILABLE})


class OnlineConsumer:
    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        service: InferenceService,
        *,
        model: str,
        worker_id: str,
        batch: int,
        loops: int,
    ) -> None:
        self.client, self.keys, self.service = client, keys, service
        self.model, self.worker_id = model, worker_id
        self.batch, self.loops = max(1, batch), max(1, loops)
        self.stream = keys.infer_stream(model)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._run(f"{self.worker_id}/{self.model}/{i}"), name=f"consume-{self.model}-{i}"
            )
            for i in range(self.loops)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, consumer: str) -> None:
        ready = False
        while True:
            try:
                if not ready:
                    await ensure_group(self.client, self.stream)
                    ready = True
                await self._round(consumer)
            except asyncio.CancelledError:
                raise
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    ready = False  # Redis restarted without its data: make the group again
                    continue
                log.warning("model %s: reading requests failed: %s", self.model, exc)
                await asyncio.sleep(1.0)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("model %s: Redis unreachable (%s); retrying", self.model, exc)
                ready = False
                await asyncio.sleep(1.0)

    async def _round(self, consumer: str) -> None:
        # Requests other consumers read and never answered (they died).
        messages = await reclaim(self.client, self.stream, consumer, RECLAIM_S, self.batch)
        if not messages:
            got: Any = await self.client.xreadgroup(
                GROUP, consumer, {self.stream: ">"}, count=self.batch, block=BLOCK_MS
            )
            messages = [(mid, fields, 1) for _, entries in got or [] for mid, fields in entries]
        if not messages:
            return
        await asyncio.gather(*(self._answer(fields, n) for _, fields, n in messages))
        ids = [mid for mid, _, _ in messages]
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()

    def _span(self, header: dict[str, Any]) -> RequestSpan | None:
        """The request's span, a child of the gateway's hop (the message's ``trace``);
        None when tracing is off."""
        tracer = self.service.tracer
        if tracer is None:
            return None
        trace = header.get("trace")
        carrier = {str(k): str(v) for k, v in trace.items()} if isinstance(trace, dict) else {}
        return tracer.request(
            kind="cluster", name=f"cluster {self.model}", model=self.model, carrier=carrier
        )

    async def _answer(self, fields: dict[Any, Any], deliveries: int) -> None:
        raw = fields.get(b"m") or fields.get("m")
        if not raw:
            return
        try:
            header, arrays = wire.unpack(raw)
        except (ModelportError, ValueError) as exc:
            log.warning("model %s: dropped an unreadable request: %s", self.model, exc)
            return
        reply = str(header.get("reply", ""))
        if not reply or time.time() > float(header.get("deadline", 0)):
            return  # the gateway has given up on it
        outputs: dict[str, Any] = {}
        span = self._span(header)
        try:
            if deliveries > MAX_DELIVERIES:
                raise ModelUnavailable(
                    f"model '{self.model}': two workers stopped while running this request"
                )
            request = InferenceRequest(
                self.model,
                tuple(Tensor(n, datatype_of(a), a) for n, a in arrays.items()),
                str(header.get("version", "")),
                str(header.get("id", "")),
                dict(header.get("parameters") or {}),
                trace=span,
            )
            response = await self.service.infer(request)
            outputs = {t.name: t.data for t in response.outputs}
            head: dict[str, Any] = {"id": header.get("id")}
            if span is not None:
                span.end()
        except ModelportError as exc:
            head = {"id": header.get("id"), "error": exc.message, "kind": exc.kind.value}
            if span is not None:
                span.end(exc.message if exc.kind in SERVER_FAULTS else "", status=exc.kind.value)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(reply, wire.pack(head, outputs))
            pipe.expire(reply, REPLY_TTL_S)
            with contextlib.suppress(redis.RedisError):
                await pipe.execute()
