"""A model's waiting requests by priority level (``priority_levels`` in model.yaml,
Triton's ``dynamic_batching.priority_levels``): level 1 runs first, then 2, ...; within
a level, arrival order. When the queue is full, a request of a higher level takes the
place of the newest one of the lowest level waiting below it, so under overload the low
levels are shed first and the high ones keep their latency.

It answers the few deque operations the batcher uses, so a model without levels keeps
a plain ``collections.deque`` (no cost on the hot path).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar


class Levelled(Protocol):
    @property
    def level(self) -> int: ...


T = TypeVar("T", bound=Levelled)


class LevelledQueue(Generic[T]):
    """Waiting requests in ``levels`` deques (level 1 first); see the module's text."""

    def __init__(self, levels: int) -> None:
        self._levels: list[deque[T]] = [deque() for _ in range(levels)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[T]:
        for level in self._levels:
            yield from level

    def _of(self, item: T) -> deque[T]:
        return self._levels[item.level - 1]

    def append(self, item: T) -> None:
        self._of(item).append(item)
        self._count += 1

    def appendleft(self, item: T) -> None:
        self._of(item).appendleft(item)
        self._count += 1

    def extendleft(self, items: Iterable[T]) -> None:
        for item in items:
            self.appendleft(item)

    def popleft(self) -> T:
        for level in self._levels:
            if level:
                self._count -= 1
                return level.popleft()
        raise IndexError("pop from an empty queue")

    def remove(self, item: T) -> None:
        self._of(item).remove(item)  # ValueError when it is not waiting
        self._count -= 1

    def shed_for(self, level: int) -> T | None:
        """Make room for a request of ``level``: take out and return the newest request
        of the lowest level below it (a larger number), or None when none waits there."""
        for lower in range(len(self._levels), level, -1):
            waiting = self._levels[lower - 1]
            if waiting:
                self._count -= 1
                return waiting.pop()
        return None
