"""The worker half of the online path: take requests from a model's stream, answer them,
many at once.

One reader per model reads the stream (``XREADGROUP``, blocking, as many messages as
there is room for; the consumer group shares the stream among every worker hosting the
model) and hands each message to the local :class:`InferenceService` as a task of its
own. So the model's batcher forms batches from every request the worker holds, and one
request's trips to Redis overlap the compute of the others. ``in_flight`` bounds the
requests a worker holds (read and not yet answered): :func:`in_flight_for` gives every
instance a full batch running and a full batch waiting, so the model never waits on
Redis, and no more, so a worker does not hoard requests another worker could run.

Answers go out in groups: one pipeline pushes each finished request's answer to the list
its gateway waits on (``RPUSH`` + ``EXPIRE``) and acknowledges and deletes the messages
(``XACK`` + ``XDEL``). A lone answer goes at once; answers that finish while a pipeline
is on the wire go together in the next one.

Requests a dead worker read and never acknowledged are claimed after ``RECLAIM_S`` and
run once more; a live worker renews its claim on the requests it has held that long (a
slow batch, a deep queue), so they are not run twice. A request delivered a third time is
answered with an error instead (two workers died with it). A request whose gateway has
given up (past its deadline) is not run. :meth:`OnlineConsumer.stop` drains: it stops
reading, lets the requests held finish and be answered (up to ``DRAIN_S``), then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.asyncio import Redis

from modelport.cluster import wire
from modelport.cluster.keys import GROUP, RedisKeys
from modelport.cluster.streams import ensure_group, reclaim
from modelport.core.service import InferenceService
from modelport.core.tracing import RequestSpan
from modelport.errors import ErrorKind, ModelportError, ModelUnavailable
from modelport.spec import ModelSpec
from modelport.tensors import InferenceRequest, Tensor, datatype_of

log = logging.getLogger("modelport.cluster")

RECLAIM_S = 3.0
# How often the reader looks for dead consumers' requests and renews its own claims.
CLAIMS_EVERY_S = 1.0
REPLY_TTL_S = 120
BLOCK_MS = 1000
MAX_DELIVERIES = 2
# How long stop() waits for the requests held to be answered before it gives them up
# (another worker claims them after RECLAIM_S).
DRAIN_S = 10.0
# The errors a request's span counts as the server's own failure.
SERVER_FAULTS = frozenset({ErrorKind.INTERNAL, ErrorKind.UNAVAILABLE})


def in_flight_for(spec: ModelSpec) -> int:
    """Requests a worker holds at once for a model: a full batch running and a full
    batch waiting on each instance."""
    return 2 * max(1, spec.max_batch_size) * spec.instances.count


async def _finish(tasks: set[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for ``tasks`` to end, cancelling those still running after ``timeout_s``."""
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One request as read from the stream; ``deliveries``: times delivered so far,
    this time included."""

    id: Any
    fields: dict[Any, Any]
    deliveries: int


@dataclass(frozen=True, slots=True)
class Answer:
    """What goes back for one message: ``body`` pushed to ``reply`` (nothing when
    ``reply`` is empty: the request was dropped), and the message acknowledged."""

    message_id: Any
    reply: str = ""
    body: bytes = b""


class OnlineConsumer:
    """Answers one model's requests on this worker (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        service: InferenceService,
        *,
        model: str,
        worker_id: str,
        in_flight: int,
    ) -> None:
        self.client, self.keys, self.service = client, keys, service
        self.model, self.in_flight = model, max(1, in_flight)
        self.consumer = f"{worker_id}/{model}"
        self.stream = keys.infer_stream(model)
        # The requests held (read, not yet answered): message id -> when read or last
        # claimed (monotonic).
        self.held: dict[Any, float] = {}
        self._room = asyncio.Event()  # set whenever an answer frees room
        self._outbox: list[Answer] = []
        self._sending = False
        self._stopping = False
        self._reader: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"consume-{self.model}")

    async def stop(self) -> None:
        """Stop reading, answer the requests held (up to ``DRAIN_S``), and return."""
        self._stopping = True
        if self._reader is not None:
            # The read on the wire ends within BLOCK_MS; what it brings is answered too.
            await _finish({self._reader}, BLOCK_MS / 1000 + 1.0)
        if self._requests:
            await _finish(set(self._requests), DRAIN_S)

    async def _read(self) -> None:
        ready = False
        claims_due = 0.0
        while not self._stopping:
            try:
                if not ready:
                    await ensure_group(self.client, self.stream)
                    ready = True
                if time.monotonic() >= claims_due:
                    claims_due = time.monotonic() + CLAIMS_EVERY_S
                    await self._renew_claims()
                    if self._free() and self._take(await self._reclaim()):
                        continue
                if not self._free():
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), CLAIMS_EVERY_S)
                    continue
                got: Any = await self.client.xreadgroup(
                    GROUP, self.consumer, {self.stream: ">"}, count=self._free(), block=BLOCK_MS
                )
                self._take(
                    [
                        StreamMessage(mid, fields, 1)
                        for _, entries in got or []
                        for mid, fields in entries
                    ]
                )
                # Let the requests just read start (up to their model's queue) before the
                # next read is packed and sent: it is not on their way.
                await asyncio.sleep(0)
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

    def _free(self) -> int:
        """How many more requests there is room for."""
        return max(0, self.in_flight - len(self.held))

    async def _reclaim(self) -> list[StreamMessage]:
        """Requests other consumers read and never answered (they died)."""
        found = await reclaim(self.client, self.stream, self.consumer, RECLAIM_S, self._free())
        # Our own held requests are renewed before they could come back here; any that
        # did (the loop stalled) are running already.
        return [StreamMessage(m, f, n) for m, f, n in found if m not in self.held]

    async def _renew_claims(self) -> None:
        """Reset the idle time of the requests held long enough that another worker could
        take them for a dead one's (``XCLAIM ... JUSTID`` counts no new delivery)."""
        now = time.monotonic()
        old = [mid for mid, since in self.held.items() if now - since >= RECLAIM_S / 3]
        if old:
            await self.client.xclaim(self.stream, GROUP, self.consumer, 0, old, justid=True)
            for mid in old:
                if mid in self.held:
                    self.held[mid] = now

    def _take(self, messages: list[StreamMessage]) -> bool:
        """Start answering each message, each in a task of its own."""
        now = time.monotonic()
        for message in messages:
            self.held[message.id] = now
            task = asyncio.create_task(self._handle(message))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        if not self._free():
            self._room.clear()
        return bool(messages)

    async def _handle(self, message: StreamMessage) -> None:
        try:
            answer = await self._answer(message)
        except Exception:
            log.exception("model %s: answering a request failed", self.model)
            answer = Answer(message.id)
        self._outbox.append(answer)
        if self._sending:
            return  # the pipeline on the wire sends this one with the next group
        self._sending = True
        try:
            while self._outbox:
                group, self._outbox = self._outbox, []
                await self._send(group)
        finally:
            self._sending = False

    async def _send(self, group: list[Answer]) -> None:
        """One pipeline: the answers pushed, the messages acknowledged and deleted."""
        ids = [answer.message_id for answer in group]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for answer in group:
                    if answer.reply:
                        pipe.rpush(answer.reply, answer.body)
                        pipe.expire(answer.reply, REPLY_TTL_S)
                pipe.xack(self.stream, GROUP, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            # Left unacknowledged: claimed and run again once Redis answers.
            log.warning("model %s: sending %d answers failed: %s", self.model, len(ids), exc)
        finally:
            for mid in ids:
                self.held.pop(mid, None)
            self._room.set()

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

    async def _answer(self, message: StreamMessage) -> Answer:
        raw = message.fields.get(b"m") or message.fields.get("m")
        if not raw:
            return Answer(message.id)
        try:
            header, arrays = wire.unpack(raw)
        except (ModelportError, ValueError) as exc:
            log.warning("model %s: dropped an unreadable request: %s", self.model, exc)
            return Answer(message.id)
        reply = str(header.get("reply", ""))
        if not reply or time.time() > float(header.get("deadline", 0)):
            # The gateway has given up on it. (The deadline is not handed to the local
            # queue: the batcher's deadline timer would keep the request's inputs alive
            # until it fires, ~30 s; the in-flight bound keeps that queue short anyway.)
            return Answer(message.id)
        outputs: dict[str, Any] = {}
        span = self._span(header)
        try:
            if message.deliveries > MAX_DELIVERIES:
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
        return Answer(message.id, reply, wire.pack(head, outputs))
