"""Dynamic batching: concurrent requests to one model version merged into batches.

The scheduling rule is *work-conserving*: an instance that is free takes whatever is
waiting right now and runs it. A lone request on an idle model therefore runs at once,
never held back for company; under load, requests pile up while every instance is busy,
and the next free instance takes them all (up to ``max_batch_size`` rows). So batches
grow with load by themselves, without a fixed delay taxing every request.

``preferred_batch_sizes``: when more rows wait than the smallest preferred size, the
batch is cut to the largest preferred size that fits (the rest waits for the next
instance), unless a full ``max_batch_size`` batch can be formed.

``max_queue_delay_us``: when a batch formed from several waiting requests is still below
its target size, wait up to this long for more. It never applies to a lone request.

A request's rows are never split across batches; requests whose non-batch shapes or
parameters differ are never mixed. When a merged batch fails, each of its requests is
run again alone, so an error reaches only the request that caused it.

``max_queue_size`` bounds the waiting requests: past it, ``infer`` raises
:class:`Overloaded` at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.core.instances import Instance
from modelport.core.stats import ModelStats
from modelport.errors import InferenceFailed, ModelportError, ModelUnavailable, Overloaded
from modelport.spec import BatchingSpec


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A request's outputs and how long it waited and ran."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    batch_size: int


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    parameters: Mapping[str, Any]
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[BatchResult]
    enqueued_ns: int


def _batch_key(inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    shapes = tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())
    return (shapes, repr(sorted(parameters.items())) if parameters else "")


class DynamicBatcher:
    """Schedules requests onto instances; batches them when ``max_batch_size`` > 0."""

    def __init__(
        self,
        name: str,
        instances: Sequence[Instance],
        max_batch_size: int,
        batching: BatchingSpec,
        stats: ModelStats,
    ) -> None:
        self.name = name
        self.instances = list(instances)
        self.max_batch_size = max_batch_size
        self.batching = batching
        self.stats = stats
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._busy = 0
        self._target = max(batching.preferred_batch_sizes or (max_batch_size,))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._serve(inst), name=f"{self.name}-batcher-{i}")
            for i, inst in enumerate(self.instances)
        ]

    async def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> BatchResult:
        if self._closed:
            raise ModelUnavailable(f"model '{self.name}' is unloading")
        if len(self._pending) >= self.batching.max_queue_size:
            raise Overloaded(
                f"model '{self.name}' is overloaded: {len(self._pending)} requests already "
                f"waiting (batching.max_queue_size); retry shortly or add instances",
                retry_after=1.0,
            )
        rows = 1
        if self.max_batch_size > 0:
            rows = next(iter(inputs.values())).shape[0] if inputs else 1
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(
            _Pending(inputs, parameters, rows, _batch_key(inputs, parameters), future,
                     time.perf_counter_ns())
        )  # fmt: skip
        self._wakeup.set()
        return await future

    async def _serve(self, instance: Instance) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take()
            if self.batching.max_queue_delay_us and len(batch) > 1:
                batch = await self._fill(batch)
            await self._execute(instance, batch)

    def _take(self, batch: list[_Pending] | None = None) -> list[_Pending]:
        """Pop the next batch: compatible requests in arrival order, cut to a good size."""
        if self.max_batch_size == 0:
            return [self._pending.popleft()]
        batch = batch or []
        rows = sum(p.rows for p in batch)
        key = batch[0].key if batch else self._pending[0].key
        rest: deque[_Pending] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.key == key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                rest.append(item)
                if rows >= self.max_batch_size:
                    break
        rest.extend(self._pending)
        self._pending = rest
        if not batch:  # a single request larger than max_batch_size cannot happen (validated)
            batch.append(self._pending.popleft())
            return batch
        return self._cut_to_preferred(batch, rows)

    def _cut_to_preferred(self, batch: list[_Pending], rows: int) -> list[_Pending]:
        preferred = [p for p in self.batching.preferred_batch_sizes if p <= rows]
        if not preferred or rows >= self.max_batch_size:
            return batch
        limit, kept, used = preferred[-1], [], 0
        for item in batch:
            if used + item.rows > limit:
                break
            kept.append(item)
            used += item.rows
        if not kept:
            return batch
        self._pending.extendleft(reversed(batch[len(kept) :]))
        return kept

    async def _fill(self, batch: list[_Pending]) -> list[_Pending]:
        deadline = time.perf_counter() + self.batching.max_queue_delay_us / 1e6
        while sum(p.rows for p in batch) < self._target:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
            if self._pending:
                batch = self._take(batch)
        return batch

    async def _execute(self, instance: Instance, batch: list[_Pending]) -> None:
        start = time.perf_counter_ns()
        self._busy += 1
        try:
            if len(batch) == 1:
                inputs = batch[0].inputs
            else:
                inputs = {
                    name: np.concatenate([p.inputs[name] for p in batch])
                    for name in batch[0].inputs
                }
            t_in = time.perf_counter_ns()
            outputs = await instance.run(inputs, batch[0].parameters)
            t_run = time.perf_counter_ns()
            results = self._split(outputs, batch)
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(ModelUnavailable(f"model '{self.name}' was stopped"))
            raise
        except Exception as exc:
            if len(batch) > 1:
                # One bad request must not fail its neighbours: run each alone, so the
                # error lands only on the request that caused it.
                for p in batch:
                    await self._execute(instance, [p])
                return
            error = (
                exc
                if isinstance(exc, ModelportError)
                else InferenceFailed(f"model '{self.name}' failed: {type(exc).__name__}: {exc}")
            )
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        finally:
            self._busy -= 1
        end = time.perf_counter_ns()
        size = sum(p.rows for p in batch)
        self.stats.record_batch(size, t_in - start, t_run - t_in, end - t_run)
        for p, out in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(BatchResult(out, start - p.enqueued_ns, size))

    def _split(
        self, outputs: dict[str, np.ndarray], batch: list[_Pending]
    ) -> list[dict[str, np.ndarray]]:
        if self.max_batch_size == 0:
            return [outputs]
        total = sum(p.rows for p in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise InferenceFailed(
                    f"model '{self.name}' returned output '{name}' with shape {array.shape} "
                    f"for a batch of {total} rows; batched outputs need {total} first"
                )
        if len(batch) == 1:
            return [outputs]
        results, offset = [], 0
        for p in batch:
            results.append({n: a[offset : offset + p.rows] for n, a in outputs.items()})
            offset += p.rows
        return results

    async def close(self, drain_seconds: float = 30.0) -> None:
        """Refuse new requests, finish the accepted ones (up to ``drain_seconds``), stop."""
        self._closed = True
        deadline = time.monotonic() + drain_seconds
        while (self._pending or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(
                    ModelUnavailable(f"model '{self.name}' was unloaded before it ran")
                )
