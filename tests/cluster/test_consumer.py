"""The worker's online consumer in process, against a real redis-server and a real
InferenceService: several requests in flight at once, batches formed from stream
messages, answers matched to their requests, the in-flight bound, deadlines, dead
consumers' requests finished exactly once, and a draining stop.

The model is a runtime that holds every batch until the test opens its gate, so what a
test checks is a state (held, running, answered), never a time. Messages are written to
the stream as a gateway writes them (``wire.pack``, a reply list per request)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio

from modelport.cluster import consumer as consumer_module
from modelport.cluster import wire
from modelport.cluster.consumer import OnlineConsumer, in_flight_for
from modelport.cluster.keys import GROUP, RedisKeys
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeContext, Signature
from modelport.core.service import InferenceService
from support.builders import write_model
from support.cluster_fixtures import RedisServer

pytestmark = pytest.mark.timeout(60)

KEYS = RedisKeys("test")
STREAM = KEYS.infer_stream("held")
MODEL_YAML = """\
runtime: gated
max_batch_size: %d
instances: {count: %d}
inputs: [{name: x, datatype: FP32, shape: [1]}]
outputs: [{name: y, datatype: FP32, shape: [1]}]
"""


@dataclass
class Gate:
    """What the gated model saw: each batch's x values, how many batches ran at once."""

    opened: threading.Event = field(default_factory=threading.Event)
    batches: list[list[float]] = field(default_factory=list)
    running: int = 0
    most_running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def runtime(self, context: RuntimeContext) -> GatedRuntime:
        return GatedRuntime(context, self)

    def seen(self) -> list[float]:
        with self.lock:
            return [x for batch in self.batches for x in batch]


class GatedRuntime:
    """Answers y = 2x, once the gate is open."""

    def __init__(self, context: RuntimeContext, gate: Gate) -> None:
        self.context, self.gate = context, gate

    def load(self) -> None:
        pass

    def signature(self) -> Signature:
        return Signature(self.context.spec.inputs, self.context.spec.outputs)

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        with self.gate.lock:
            self.gate.batches.append(inputs["x"].ravel().tolist())
            self.gate.running += 1
            self.gate.most_running = max(self.gate.most_running, self.gate.running)
        try:
            assert self.gate.opened.wait(30), "the test never opened the gate"
            return {"y": inputs["x"] * 2}
        finally:
            with self.gate.lock:
                self.gate.running -= 1

    def unload(self) -> None:
        pass


@dataclass
class Setup:
    client: redis.asyncio.Redis
    gate: Gate
    service: InferenceService

    def consumer(self, worker_id: str, in_flight: int = 0) -> OnlineConsumer:
        spec = self.service.get_version("held").spec
        return OnlineConsumer(
            self.client,
            KEYS,
            self.service,
            model="held",
            worker_id=worker_id,
            in_flight=in_flight or in_flight_for(spec),
        )


@pytest.fixture
async def setup(
    tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[Callable[[int, int], Any]]:
    """``await setup(max_batch_size, instances)``: the gated model served, a Redis client."""
    made: list[Setup] = []

    async def make(max_batch_size: int, instances: int) -> Setup:
        write_model(
            tmp_path / "models", "held", MODEL_YAML % (max_batch_size, instances), {"1/.keep": ""}
        )
        gate = Gate()
        service = InferenceService(
            ModelRepository(tmp_path / "models"),
            {"gated": gate.runtime},
            name="modelport",
            version="test",
        )
        await service.open()
        made.append(Setup(redis.asyncio.from_url(redis_server.url), gate, service))
        return made[-1]

    yield make
    for done in made:
        done.gate.opened.set()
        await done.service.close()
        await done.client.aclose()


async def send(client: redis.asyncio.Redis, x: float, deadline_s: float = 30.0) -> str:
    """Put one request on the stream as a gateway does; its reply list's key."""
    request_id = uuid.uuid4().hex
    reply = KEYS.reply(request_id)
    header = {"id": request_id, "reply": reply, "deadline": time.time() + deadline_s}
    await client.xadd(STREAM, {"m": wire.pack(header, {"x": np.array([[x]], np.float32)})})
    return reply


async def answer(client: redis.asyncio.Redis, reply: str) -> tuple[dict[str, Any], float]:
    """The one answer on ``reply`` (its header, y), checking no second one follows."""
    got: Any = await client.blpop([reply], timeout=20)
    assert got is not None, f"no answer on {reply}"
    assert await client.llen(reply) == 0, "answered twice"
    header, outputs = wire.unpack(got[1])
    return header, float(outputs["y"].ravel()[0]) if "y" in outputs else float("nan")


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.01)


async def test_one_worker_holds_many_requests_and_batches_them(setup: Any) -> None:
    s: Setup = await setup(4, 2)
    consumer = s.consumer("w1")
    assert consumer.in_flight == 2 * 4 * 2
    consumer.start()
    try:
        xs = [float(i) for i in range(1, 11)]
        replies = [await send(s.client, x) for x in xs]
        # Both instances run a batch at once, and the worker holds every request read.
        await until(lambda: s.gate.running == 2, "two batches running at once")
        await until(lambda: len(consumer.held) == len(xs), "all ten requests held")
        s.gate.opened.set()
        answers = [await answer(s.client, r) for r in replies]
        assert [y for _, y in answers] == [2 * x for x in xs]
        # Each answer names its own request.
        ids = [r.rsplit(":", 1)[1] for r in replies]
        assert [h["id"] for h, _ in answers] == ids
        assert sorted(s.gate.seen()) == xs  # each request ran once
        assert max(len(b) for b in s.gate.batches) > 1  # batched from stream messages
        assert s.gate.most_running == 2
        await until(lambda: not consumer.held, "every request acknowledged")
        assert await s.client.xlen(STREAM) == 0  # acknowledged and deleted
    finally:
        await consumer.stop()


async def test_a_worker_holds_no_more_than_its_bound(setup: Any) -> None:
    s: Setup = await setup(1, 1)
    consumer = s.consumer("w1", in_flight=2)
    consumer.start()
    try:
        replies = [await send(s.client, float(x)) for x in range(5)]
        await until(lambda: len(consumer.held) == 2, "two requests held")
        await asyncio.sleep(0.3)  # room for a wrong read to happen
        pending: Any = await s.client.xpending(STREAM, GROUP)
        assert pending["pending"] == 2 and len(consumer.held) == 2
        # The other three are still in the stream, for any worker to read.
        groups: Any = await s.client.xinfo_groups(STREAM)
        assert groups[0]["lag"] == 3
        s.gate.opened.set()
        assert [y for _, y in [await answer(s.client, r) for r in replies]] == [
            0.0,
            2.0,
            4.0,
            6.0,
            8.0,
        ]
    finally:
        await consumer.stop()


async def test_a_request_past_its_deadline_is_not_run(setup: Any) -> None:
    s: Setup = await setup(1, 1)
    s.gate.opened.set()
    stale = await send(s.client, 1.0, deadline_s=-1)
    fresh = await send(s.client, 2.0)
    consumer = s.consumer("w1")
    consumer.start()
    try:
        assert (await answer(s.client, fresh))[1] == 4.0
        await until(lambda: not consumer.held, "both acknowledged")
        assert s.gate.seen() == [2.0]  # the stale one never reached the model
        assert await s.client.llen(stale) == 0  # nobody waits for it: no answer
        assert await s.client.xlen(STREAM) == 0
    finally:
        await consumer.stop()


async def test_a_dead_consumers_requests_are_finished_exactly_once(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "RECLAIM_S", 0.3)
    monkeypatch.setattr(consumer_module, "CLAIMS_EVERY_S", 0.05)
    s: Setup = await setup(4, 1)
    s.gate.opened.set()
    consumer = s.consumer("survivor")
    await s.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    replies = [await send(s.client, float(x)) for x in range(6)]
    # A worker read them all and died (kill -9): read, never answered, never acknowledged.
    read: Any = await s.client.xreadgroup(GROUP, "dead/held", {STREAM: ">"}, count=10)
    assert len(read[0][1]) == 6
    consumer.start()
    try:
        answers = [await answer(s.client, r) for r in replies]
        assert [y for _, y in answers] == [2.0 * x for x in range(6)]
        assert sorted(s.gate.seen()) == [float(x) for x in range(6)]  # once each
        await until(lambda: not consumer.held, "every request acknowledged")
        assert (await s.client.xpending(STREAM, GROUP))["pending"] == 0
    finally:
        await consumer.stop()


async def test_a_live_worker_keeps_the_requests_it_holds_long(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that runs longer than the reclaim time is not taken for a dead worker's."""
    monkeypatch.setattr(consumer_module, "RECLAIM_S", 0.3)
    monkeypatch.setattr(consumer_module, "CLAIMS_EVERY_S", 0.05)
    s: Setup = await setup(1, 1)
    slow, other = s.consumer("slow"), s.consumer("other")
    slow.start()
    try:
        replies = [await send(s.client, float(x)) for x in range(2)]
        await until(lambda: len(slow.held) == 2, "both held by the first worker")
        other.start()
        await asyncio.sleep(1.0)  # three reclaim times: the second worker looks many times
        assert not other.held
        s.gate.opened.set()
        assert [y for _, y in [await answer(s.client, r) for r in replies]] == [0.0, 2.0]
        assert sorted(s.gate.seen()) == [0.0, 1.0]  # once each
    finally:
        await other.stop()
        await slow.stop()


async def test_stop_answers_the_requests_held(setup: Any) -> None:
    s: Setup = await setup(4, 1)
    consumer = s.consumer("w1")
    consumer.start()
    replies = [await send(s.client, float(x)) for x in range(3)]
    await until(lambda: len(consumer.held) == 3, "three requests held")
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waiting for the held requests
    s.gate.opened.set()
    await asyncio.wait_for(stopping, 15)
    for x, reply in enumerate(replies):
        assert await s.client.llen(reply) == 1, "answered before stop returned"
        assert (await answer(s.client, reply))[1] == 2.0 * x
    assert (await s.client.xpending(STREAM, GROUP))["pending"] == 0
    # Nothing more is read once stopped.
    late = await send(s.client, 9.0)
    await asyncio.sleep(0.2)
    assert await s.client.llen(late) == 0 and 9.0 not in s.gate.seen()
