"""The two Redis Streams moves both queues need (online requests and tasks): a consumer
group that exists, and taking over what a dead consumer left unacknowledged."""

from __future__ import annotations

from typing import Any

import redis
from redis.asyncio import Redis

from modelport.cluster.keys import GROUP


async def ensure_group(client: Redis, stream: str) -> None:
    """Create the stream's consumer group if it is not there (also after a Redis restart
    that lost it), starting from the stream's first entry."""
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def reclaim(
    client: Redis, stream: str, consumer: str, idle_s: float, count: int
) -> list[tuple[Any, Any, int]]:
    """Entries other consumers read and left unacknowledged for ``idle_s`` (they died),
    now ``consumer``'s: (id, fields, times delivered so far, this time included)."""
    result: Any = await client.xautoclaim(
        stream, GROUP, consumer, int(idle_s * 1000), "0-0", count=count
    )
    out = []
    for mid, fields in result[1]:
        if fields is None:  # deleted meanwhile
            continue
        pending = await client.xpending_range(stream, GROUP, mid, mid, 1)
        out.append((mid, fields, int(pending[0]["times_delivered"]) if pending else 2))
    return out
