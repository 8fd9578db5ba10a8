"""Memory limits: a cap on the models loaded at once, by count or by bytes.

When loading a model would pass ``max_loaded_models`` or ``max_loaded_bytes``, the
registry first unloads the least recently used READY models (by their last request),
never one with a request queued, running, or waiting for it to load. An unloaded
(*evicted*) model stays listed, UNAVAILABLE with the reason, and keeps answering: its
versions are replaced by stand-ins whose :class:`OnDemandBatcher` loads the model again
on the first request, which waits for the load (at most ``load_timeout_s``) and then
runs. A model's size is estimated as its files' size on disk (its folder, less the
version folders its policy does not select).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.batcher import NO_TERMS, Batcher, BatchResult, QueueTerms
from modelport.errors import ModelUnavailable
from modelport.numbers import natural
from modelport.tensors import InferenceRequest

EVICTED_REASON = "unloaded to stay under {setting} (loads again on demand)"


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """The caps (0: none) and how long a request waits for an evicted model to load."""

    max_models: int = 0
    max_bytes: int = 0
    load_timeout_s: float = 60.0

    @property
    def capped(self) -> bool:
        return self.max_models > 0 or self.max_bytes > 0


@dataclass(frozen=True, slots=True)
class Resident:
    """What eviction needs to know about one loaded model."""

    name: str
    last_used: int
    size: int
    idle: bool


@dataclass(frozen=True, slots=True)
class Room:
    """The outcome of :func:`make_room`: whom to unload, and whether that is enough."""

    evict: tuple[str, ...]
    setting: str  # the cap that forced it, for the evicted models' reason
    fits: bool


def make_room(resident: Sequence[Resident], size: int, limits: MemoryLimits) -> Room:
    """The least recently used idle models to unload so one more of ``size`` bytes fits."""
    count = len(resident) + 1
    total = sum(r.size for r in resident) + size
    evict: list[str] = []
    setting = ""

    def over() -> str:
        if limits.max_models and count > limits.max_models:
            return "max_loaded_models"
        if limits.max_bytes and total > limits.max_bytes:
            return "max_loaded_bytes"
        return ""

    for victim in sorted((r for r in resident if r.idle), key=lambda r: r.last_used):
        why = over()
        if not why:
            break
        setting = setting or why
        evict.append(victim.name)
        count -= 1
        total -= victim.size
    return Room(tuple(evict), setting, not over())


def files_size(folder: Path, versions: Iterable[int]) -> int:
    """Bytes on disk of a model: its folder's files, less unselected version folders."""
    keep = {str(v) for v in versions}
    total = 0
    for path in folder.rglob("*"):
        top = path.relative_to(folder).parts[0]
        if natural(top) is not None and top not in keep:
            continue
        if path.is_file():
            total += path.stat().st_size
    return total


class OnDemandBatcher:
    """Stands in for an evicted version's batcher: a request loads the model again
    (``load`` returns the new version's batcher, raising if the model cannot load or
    takes too long) and then runs on it. Same interface as ``DynamicBatcher``."""

    def __init__(self, name: str, load: Callable[[], Awaitable[Batcher]]) -> None:
        self.name = name
        self._load = load
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queue_depth(self) -> int:
        return len(self._tasks)

    @property
    def busy(self) -> int:
        return 0

    def start(self) -> None:
        pass

    async def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> BatchResult:
        return await self.submit(inputs, parameters)

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        parameters: Mapping[str, Any],
        done: Callable[[], None] | None = None,
        *,
        request: InferenceRequest | None = None,
        terms: QueueTerms = NO_TERMS,
    ) -> asyncio.Future[BatchResult]:
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        if done is not None:
            future.add_done_callback(lambda _: done())
        task = asyncio.create_task(self._run(inputs, parameters, future, request, terms))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def _run(
        self,
        inputs: dict[str, np.ndarray],
        parameters: Mapping[str, Any],
        future: asyncio.Future[BatchResult],
        request: InferenceRequest | None,
        terms: QueueTerms,
    ) -> None:
        try:
            batcher = await self._load()
            # No await between the load and the submit: nothing can evict it meanwhile.
            result = await batcher.submit(inputs, parameters, request=request, terms=terms)
        except asyncio.CancelledError:
            if not future.done():
                future.set_exception(ModelUnavailable(f"model '{self.name}' was unloaded"))
            raise
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def close(self, drain_seconds: float = 30.0) -> None:
        for task in list(self._tasks):
            task.cancel()
