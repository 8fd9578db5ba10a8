"""The broker hands task ids to workers: at-least-once, with a visibility timeout.

A claimed delivery stays invisible to other workers until it is acked, nacked, or its
visibility timeout runs out (a worker that died), when it is delivered again. A worker
holding a long task extends its claim. This is the shape of Redis Streams with a
consumer group (``XADD`` / ``XREADGROUP`` / ``XACK`` / ``XAUTOCLAIM``), so a Redis broker
implements the same protocol; the in-process one below keeps everything in memory and is
the default for ``modelport serve``, where the task store (not the broker) is what
survives a restart: :meth:`TaskService.recover` enqueues the unfinished tasks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Delivery:
    """One hand-out of a task id; ``deliveries`` counts hand-outs of this message."""

    task_id: str
    delivery_id: str
    deliveries: int


class Broker(Protocol):
    async def enqueue(self, task_id: str, model: str = "") -> None:
        """Queue a task id for a worker hosting ``model``."""

    async def claim(self, consumer: str, visibility_s: float, wait_s: float) -> Delivery | None:
        """The next task id for ``consumer``, waiting up to ``wait_s``; None if none came."""

    async def extend(self, delivery: Delivery, visibility_s: float) -> None:
        """Keep a long-running delivery claimed for another ``visibility_s``."""

    async def ack(self, delivery: Delivery) -> None:
        """The task is done with (whatever its outcome): never deliver it again."""

    async def nack(self, delivery: Delivery) -> None:
        """Give the task back to be delivered again at once."""

    async def backlog(self, model: str) -> int:
        """Messages for ``model`` waiting or claimed (0: nothing in the broker for it)."""

    async def ping(self) -> None:
        """Return once the broker has answered; raise whatever reaching it raised."""

    async def close(self) -> None: ...


@dataclass(slots=True, kw_only=True)
class _Message:
    task_id: str
    delivery_id: str
    deliveries: int = 0
    deadline: float = 0.0


class MemoryBroker:
    """The in-process :class:`Broker`: a FIFO and a table of claimed messages."""

    def __init__(self) -> None:
        self._ready: deque[_Message] = deque()
        self._claimed: dict[str, _Message] = {}
        self._wakeup = asyncio.Condition()
        self._ids = itertools.count(1)

    async def enqueue(self, task_id: str, model: str = "") -> None:
        async with self._wakeup:
            self._ready.append(_Message(task_id=task_id, delivery_id=f"{next(self._ids)}"))
            self._wakeup.notify()

    async def claim(self, consumer: str, visibility_s: float, wait_s: float) -> Delivery | None:
        deadline = time.monotonic() + wait_s
        async with self._wakeup:
            while True:
                self._expire()
                if self._ready:
                    message = self._ready.popleft()
                    message.deliveries += 1
                    message.deadline = time.monotonic() + visibility_s
                    self._claimed[message.delivery_id] = message
                    return Delivery(message.task_id, message.delivery_id, message.deliveries)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # Wake at the latest when a claim may have expired or the wait is over.
                with_claims = [m.deadline for m in self._claimed.values()]
                until = min([left, *(d - time.monotonic() for d in with_claims)])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), max(until, 0.01))

    async def extend(self, delivery: Delivery, visibility_s: float) -> None:
        message = self._claimed.get(delivery.delivery_id)
        if message is not None:
            message.deadline = time.monotonic() + visibility_s

    async def ack(self, delivery: Delivery) -> None:
        self._claimed.pop(delivery.delivery_id, None)

    async def nack(self, delivery: Delivery) -> None:
        async with self._wakeup:
            message = self._claimed.pop(delivery.delivery_id, None)
            if message is not None:
                self._ready.appendleft(message)
                self._wakeup.notify()

    async def backlog(self, model: str) -> int:
        return len(self._ready) + len(self._claimed)  # (one queue for every model)

    def has(self, task_id: str) -> bool:
        """Whether ``task_id`` waits or runs here (other server processes' tasks do not)."""
        return any(m.task_id == task_id for m in (*self._ready, *self._claimed.values()))

    async def ping(self) -> None:
        pass  # in this process: always here

    async def close(self) -> None:
        self._ready.clear()
        self._claimed.clear()

    def _expire(self) -> None:
        now = time.monotonic()
        for key, message in list(self._claimed.items()):
            if message.deadline <= now:
                del self._claimed[key]
                self._ready.append(message)

    @property
    def depth(self) -> int:
        return len(self._ready)
