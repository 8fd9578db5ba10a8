"""The Redis parts on their own, against a real redis-server: the task broker's
at-least-once protocol, heartbeats, and the online wire format."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis.asyncio

from modelport.cluster import wire
from modelport.cluster.directory import Directory, HostedModel, WorkerInfo
from modelport.cluster.keys import RedisKeys
from modelport.errors import InvalidInput
from modelport.tasks.redis_broker import RedisBroker
from support.cluster_fixtures import RedisServer

pytestmark = pytest.mark.timeout(60)


async def test_redis_broker_delivers_again_after_expiry_and_nack(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.from_url(redis_server.url)
    keys = RedisKeys("test")
    broker = RedisBroker(client, keys, lambda: ["m"])
    other = RedisBroker(client, keys, lambda: ["other-model"])
    try:
        await broker.enqueue("a", "m")
        # A worker that hosts other models never sees it.
        assert await other.claim("x", visibility_s=10, wait_s=0.05) is None
        first = await broker.claim("w1", visibility_s=0.2, wait_s=0.5)
        assert first is not None and first.task_id == "a" and first.deliveries == 1
        assert await broker.claim("w2", visibility_s=0.2, wait_s=0.05) is None
        # w1 extends its claim while it works: nobody else gets it meanwhile.
        await asyncio.sleep(0.15)
        await broker.extend(first, 0.2)
        await asyncio.sleep(0.1)
        assert await broker.claim("w2", visibility_s=0.2, wait_s=0.01) is None
        # w1 died: once the claim ran out, another worker gets it, delivered a second time.
        await asyncio.sleep(0.3)
        # (Redis's idle time decides: workers share one visibility timeout.)
        again = await broker.claim("w2", visibility_s=0.2, wait_s=0.05)
        assert again is not None and again.task_id == "a" and again.deliveries == 2
        await broker.nack(again)  # back in the queue at once, as a new message
        third = await broker.claim("w3", visibility_s=10, wait_s=0.5)
        assert third is not None and third.task_id == "a"
        await broker.ack(third)
        assert await broker.claim("w3", visibility_s=0.01, wait_s=0.1) is None
        assert await client.xlen(keys.task_stream("m")) == 0  # acked entries are deleted
    finally:
        await client.aclose()


async def test_redis_broker_wakes_a_waiting_worker(redis_server: RedisServer) -> None:
    client = redis.asyncio.from_url(redis_server.url)
    broker = RedisBroker(client, RedisKeys("test"), lambda: ["m"])
    try:
        await broker.claim("w", visibility_s=10, wait_s=0.01)  # makes the group
        waiting = asyncio.create_task(broker.claim("w", visibility_s=10, wait_s=5))
        await asyncio.sleep(0.1)
        await broker.enqueue("b", "m")
        delivery = await asyncio.wait_for(waiting, 3)
        assert delivery is not None and delivery.task_id == "b"
    finally:
        await client.aclose()


async def test_heartbeats_list_live_workers_and_expire(redis_server: RedisServer) -> None:
    client = redis.asyncio.from_url(redis_server.url)
    directory = Directory(client, RedisKeys("test"), ttl_s=0.5)
    model = HostedModel(
        name="scale",
        versions=(1, 2),
        max_batch_size=8,
        inputs=({"name": "x", "datatype": "FP32", "shape": [4]},),
        outputs=({"name": "y", "datatype": "FP32", "shape": [4]},),
        platform="python",
    )
    info = WorkerInfo(
        id="w1",
        role="worker",
        host="host",
        pid=42,
        started_at=1.0,
        seen_at=2.0,
        models=(model,),
        task_models={"job": (1,)},
        slots=("gpu0",),
        running={"t1": "gpu0"},
    )
    try:
        await directory.beat(info)
        (seen,) = await directory.read()
        assert seen == info
        assert directory.hosts("scale") == [info] and directory.hosts("other") == []
        assert directory.hosted_models(exclude="me") == {"scale": model}
        assert directory.task_versions("job") == {1}
        assert directory.running_elsewhere("t1", "me") and not directory.running_elsewhere(
            "t1", "w1"
        )
        await asyncio.sleep(0.7)  # no heartbeat: gone
        assert await directory.read() == ()
    finally:
        await client.aclose()


def test_wire_round_trips_every_kind_of_tensor() -> None:
    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "h": np.array([[1.5]], dtype=np.float16),
        "i": np.array([-(2**40), 2**40], dtype=np.int64),
        "b": np.array([True, False]),
        "s": np.array([b"caf\xc3\xa9", b"", b"\x00\xff"], dtype=np.object_),
    }
    header, back = wire.unpack(wire.pack({"id": "r1", "parameters": {"k": 1}}, arrays))
    assert header == {"id": "r1", "parameters": {"k": 1}}
    assert back.keys() == arrays.keys()
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tolist() == array.tolist()


def test_wire_refuses_a_truncated_message() -> None:
    message = wire.pack({"id": "r"}, {"x": np.ones(4, dtype=np.float32)})
    with pytest.raises(InvalidInput):
        wire.unpack(message[:-3])
    with pytest.raises(InvalidInput):
        wire.unpack(b"\x01")
