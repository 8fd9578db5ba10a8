"""Dynamic batching: concurrent requests to one model version merged into batches.

:class:`DynamicBatcher` owns the queue, the instances and the one timer; *when* a batch
runs, where, and how big is :class:`~modelport.core.batch_policy.BatchPolicy`'s call
(``batch_policy.py``: work-conserving takes, ``preferred_batch_sizes``,
``max_queue_delay_us``, the echo rule, lone requests run inline). In short: a lone
request on an idle model runs at once, never held back for company; under load,
requests pile up while every instance is busy, and the next free instance takes them
all (up to ``max_batch_size`` rows), so batches grow with load without a fixed delay
taxing every request.

Scheduling happens in one callback per event-loop iteration (``_flush``), after the
loop has read every request that arrived together, so requests that came in at once
are batched at once, with no timer.

A request whose future was cancelled before it ran (its client gave up) is dropped
from the queue, not computed. A request's rows are never split across batches;
requests whose non-batch shapes or parameters differ are never mixed. When a merged
batch fails, each of its requests is run again alone, so an error reaches only the
request that caused it (unless the error is the model's: unavailable or overloaded,
which fails the whole batch at once).

A runtime that takes a batch as its requests (a :class:`RequestRuntime`, Triton's python
backend) gets the gathered requests as they came, unmerged, and answers each on its own:
an error it gives for one request fails that request alone, with no rerun.

``max_queue_size`` bounds the waiting requests: past it, ``submit`` raises
:class:`Overloaded` at once, unless the model has ``priority_levels`` and a request of a
lower level waits: that one is shed instead (``request_queue.py``). A request with a
deadline (:class:`QueueTerms`) still waiting when it passes is dropped with
:class:`DeadlineExceeded`; once taken into a batch it runs to its end.

``submit``'s ``done``: called straight after the request's future is resolved, in the same
loop callback. A done-callback of the future itself waits for the next loop iteration
(asyncio schedules it with ``call_soon``): a few tens of µs for a request that ran inline.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from modelport.core.batch_policy import (
    ECHO_CAP_S,
    INLINE_BUDGET_NS,
    BatchPolicy,
    History,
    RunInline,
    Snapshot,
    WaitUntil,
)
from modelport.core.instances import Instance
from modelport.core.request_queue import LevelledQueue
from modelport.core.runtime import GatheredRequest, RequestOutcome
from modelport.core.stats import ModelStats
from modelport.core.tracing import BatchSpan, QueuedRequest, Tracer
from modelport.errors import (
    DeadlineExceeded,
    InferenceFailed,
    ModelportError,
    ModelUnavailable,
    Overloaded,
)
from modelport.spec import BatchingSpec
from modelport.tensors import InferenceRequest


@dataclass(frozen=True, slots=True)
class QueueTerms:
    """How a request waits: its deadline (``time.monotonic_ns()``; 0: none) and its
    priority (1 first; 0: the model's default level)."""

    deadline_ns: int = 0
    priority: int = 0


NO_TERMS = QueueTerms()


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A request's outputs and how long it waited and ran."""

    outputs: dict[str, np.ndarray]
    queue_ns: int
    batch_size: int


class Batcher(Protocol):
    """What a model version's slot holds: :class:`DynamicBatcher`, or the stand-in of an
    evicted version (``cache.OnDemandBatcher``). The service queues requests on it."""

    @property
    def queue_depth(self) -> int:
        """Requests waiting to run."""

    @property
    def busy(self) -> int:
        """Instances running a batch now."""

    def start(self) -> None:
        """Bind to the running event loop."""

    async def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> BatchResult:
        """Queue one request and wait for its outputs."""

    def submit(
        self,
        inputs: dict[str, np.ndarray],
        parameters: Mapping[str, Any],
        done: Callable[[], None] | None = None,
        *,
        request: InferenceRequest | None = None,
        terms: QueueTerms = NO_TERMS,
    ) -> asyncio.Future[BatchResult]:
        """Queue one request; the future resolves with its outputs, then ``done`` is
        called (at once, not a loop iteration later). ``request``: the request the inputs
        came from (its id and the outputs it names), for a runtime that takes requests;
        ``terms``: its deadline and priority."""

    async def close(self, drain_seconds: float = 30.0) -> None:
        """Refuse new requests, finish the accepted ones (up to ``drain_seconds``), stop."""


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    parameters: Mapping[str, Any]
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[BatchResult]
    enqueued_ns: int
    done: Callable[[], None] | None = None
    request: InferenceRequest | None = None
    solo: bool = False
    level: int = 1
    # The deadline's timer, cancelled once the request is taken into a batch (a taken
    # one runs to its end): left to fire, it would hold the inputs until the deadline.
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class _Ran:
    """What an instance thread hands back: per-request outputs and the three timings;
    ``errors``: the requests (by position) a request-taking runtime failed on their own."""

    results: list[dict[str, np.ndarray]]
    input_ns: int
    infer_ns: int
    output_ns: int
    errors: Mapping[int, ModelportError] | None = None


def _taken(batch: list[_Pending]) -> list[_Pending]:
    """``batch``, its requests' deadline timers cancelled: taken, they run to their end."""
    for p in batch:
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
    return batch


def _batch_key(inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    shapes = tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())
    return (shapes, repr(sorted(parameters.items())) if parameters else "")


class DynamicBatcher:
    """Schedules requests onto instances; batches them when ``max_batch_size`` > 0."""

    def __init__(
        self,
        name: str,
        instances: Sequence[Instance],
        *,
        max_batch_size: int,
        batching: BatchingSpec,
        stats: ModelStats,
        inline_budget_ns: int = INLINE_BUDGET_NS,
        echo_cap_s: float = ECHO_CAP_S,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        self.tracer = tracer  # None: tracing is off, and batches cost one check for it
        self.instances = list(instances)
        self.max_batch_size = max_batch_size
        self.max_queue_size = batching.max_queue_size
        self.stats = stats
        self.policy = BatchPolicy.of(
            max_batch_size, batching, inline_budget_ns=inline_budget_ns, echo_cap_s=echo_cap_s
        )
        self._history = History()
        self._free = list(reversed(self.instances))
        self.levels = batching.priority_levels
        self.default_level = batching.default_priority_level or max(self.levels, 1)
        self._pending: deque[_Pending] | LevelledQueue[_Pending] = (
            LevelledQueue(self.levels) if self.levels > 1 else deque()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        # uvloop answers call_at with a plain Handle (no when()) for a wait under 0.5 ms,
        # so the timer's deadline is kept here.
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> int:
        return len(self.instances) - len(self._free)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

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
        """Queue one request; the future resolves with its outputs, then ``done`` is
        called (at once, not a loop iteration later). ``request``: the request the inputs
        came from (its id and the outputs it names), for a runtime that takes requests;
        ``terms``: its deadline and priority."""
        if self._closed:
            raise ModelUnavailable(f"model '{self.name}' is unloading")
        level = self._level(terms.priority) if self.levels > 1 else 1
        if len(self._pending) >= self.max_queue_size:
            self._make_room(level)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        rows = 1
        if self.max_batch_size > 0 and inputs:
            rows = next(iter(inputs.values())).shape[0]
        future: asyncio.Future[BatchResult] = loop.create_future()
        key = _batch_key(inputs, parameters)
        pending = _Pending(
            inputs, parameters, rows, key, future, time.perf_counter_ns(), done, request
        )
        pending.level = level
        if terms.deadline_ns:
            self._expire_at(pending, terms.deadline_ns)
        self._pending.append(pending)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _level(self, priority: int) -> int:
        """A request's level: its priority when it names one of the model's levels, else
        the default (as Triton reads 0 and values past the last level)."""
        return priority if 1 <= priority <= self.levels else self.default_level

    def _make_room(self, level: int) -> None:
        """The queue is full: shed a waiting request of a lower level, or refuse."""
        shed = self._pending.shed_for(level) if isinstance(self._pending, LevelledQueue) else None
        if shed is None:
            raise Overloaded(
                f"model '{self.name}' is overloaded: {len(self._pending)} requests already "
                f"waiting (batching.max_queue_size); retry shortly or add instances",
                retry_after=1.0,
            )
        if not shed.future.done():
            shed.future.set_exception(
                Overloaded(
                    f"model '{self.name}' is overloaded: this request (priority level "
                    f"{shed.level}) gave its place to one of level {level}; retry shortly",
                    retry_after=1.0,
                )
            )
        self._notify(shed)

    def _expire_at(self, pending: _Pending, deadline_ns: int) -> None:
        left_s = (deadline_ns - time.monotonic_ns()) / 1e9
        if left_s <= 0:
            raise DeadlineExceeded(
                f"the request to model '{self.name}' reached its deadline before it was "
                "queued; give it more time (the v2 'timeout' parameter is in microseconds)"
            )
        loop = self._loop or asyncio.get_running_loop()
        pending.timer = loop.call_later(left_s, self._expire, pending)

    def _expire(self, pending: _Pending) -> None:
        """A request's deadline passed: drop it if it still waits (a taken one runs)."""
        if pending.future.done():
            return
        try:
            self._pending.remove(pending)
        except ValueError:
            return
        waited_ms = (time.perf_counter_ns() - pending.enqueued_ns) / 1e6
        pending.future.set_exception(
            DeadlineExceeded(
                f"the request to model '{self.name}' waited {waited_ms:.1f} ms in the queue, "
                "past its deadline, and was dropped without running; give it more time or "
                "add instances"
            )
        )
        self._notify(pending)

    # -- scheduling -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._scheduled = False
        loop = self._loop
        assert loop is not None
        while self._free and self._pending:
            idle = len(self._free) == len(self.instances)
            batch = self._take()
            if not batch:  # only requests their clients gave up on were waiting
                continue
            instance = self._free[-1]
            moment = Snapshot(
                loop.time(),
                len(batch),
                sum(p.rows for p in batch),
                len(self._pending),
                idle,
                instance.inline,
                self._history,
            )
            decision = self.policy.decide(moment)
            self._history = decision.history
            if isinstance(decision, WaitUntil):
                self._pending.extendleft(reversed(batch))
                self._wake_at(decision.until)
                return
            self._free.pop()
            if isinstance(decision, RunInline):
                self._run_inline(instance, batch, decision.lone)
            else:
                self._dispatch(instance, batch)

    def _wake_at(self, until: float) -> None:
        """Flush again at ``until``, unless a timer already comes sooner."""
        assert self._loop is not None
        timer = self._timer
        if timer is None or timer.cancelled() or self._timer_at > until:
            if timer is not None:
                timer.cancel()
            self._timer, self._timer_at = self._loop.call_at(until, self._on_timer), until

    def _on_timer(self) -> None:
        self._timer = None
        self._flush()

    def _take(self) -> list[_Pending]:
        """Pop the next batch: compatible requests in arrival order, cut to a good size."""
        pending = self._pending
        first = pending.popleft()
        while first.future.cancelled():
            self._notify(first)
            if not pending:
                return []
            first = pending.popleft()
        if self.max_batch_size == 0 or first.solo:
            return _taken([first])
        batch, rows, key = [first], first.rows, first.key
        skipped: list[_Pending] = []
        while pending and rows < self.max_batch_size:
            item = pending.popleft()
            if item.future.cancelled():
                self._notify(item)
            elif item.key == key and not item.solo and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                skipped.append(item)
        pending.extendleft(reversed(skipped))
        if len(batch) == 1:
            return _taken(batch)
        kept = self.policy.cut([p.rows for p in batch])
        pending.extendleft(reversed(batch[kept:]))
        return _taken(batch[:kept])

    # -- execution --------------------------------------------------------------------------

    def _work(self, instance: Instance, batch: list[_Pending], lone: bool = False) -> _Ran:
        """Runs on the instance's thread (or inline): merge, infer, split."""
        if instance.infer_requests is not None:
            return self._work_requests(instance.infer_requests, batch)
        start = time.perf_counter_ns()
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs
            }
        t_in = time.perf_counter_ns()
        run = instance.infer_lone if lone else instance.runtime.infer
        outputs = run(inputs, batch[0].parameters)
        t_run = time.perf_counter_ns()
        results = self._split(outputs, batch)
        return _Ran(results, t_in - start, t_run - t_in, time.perf_counter_ns() - t_run)

    def _work_requests(
        self,
        infer_requests: Callable[[Sequence[GatheredRequest]], list[RequestOutcome]],
        batch: list[_Pending],
    ) -> _Ran:
        """Runs on the instance's thread: the requests as they came, an outcome each."""
        start = time.perf_counter_ns()
        gathered = [
            GatheredRequest(p.inputs, p.parameters, r.id, tuple(o.name for o in r.outputs))
            if (r := p.request) is not None
            else GatheredRequest(p.inputs, p.parameters)
            for p in batch
        ]
        t_in = time.perf_counter_ns()
        outcomes = infer_requests(gathered)
        t_run = time.perf_counter_ns()
        if len(outcomes) != len(batch):
            raise InferenceFailed(
                f"model '{self.name}' gave {len(outcomes)} outcomes for {len(batch)} requests"
            )
        results: list[dict[str, np.ndarray]] = []
        errors: dict[int, ModelportError] = {}
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, ModelportError):
                errors[i] = outcome
                results.append({})
            else:
                results.append(outcome)
        return _Ran(results, t_in - start, t_run - t_in, time.perf_counter_ns() - t_run, errors)

    def _dispatch(self, instance: Instance, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        if self.tracer is not None:
            self._dispatch_traced(instance, batch, started, self.tracer)
            return
        future = instance.call(partial(self._work, instance, batch))
        future.add_done_callback(partial(self._finished, instance, batch, started))

    def _dispatch_traced(
        self, instance: Instance, batch: list[_Pending], started: int, tracer: Tracer
    ) -> None:
        span = self._batch_span(batch, started, tracer)
        work = partial(self._work, instance, batch)
        future = instance.call(work if span is None else partial(span.run, work))
        future.add_done_callback(partial(self._finished, instance, batch, started, span=span))

    def _batch_span(self, batch: list[_Pending], started: int, tracer: Tracer) -> BatchSpan | None:
        members = [
            QueuedRequest(p.request.trace if p.request is not None else None, p.enqueued_ns)
            for p in batch
        ]
        return tracer.batch(model=self.name, members=members, started_ns=started)

    def _run_inline(self, instance: Instance, batch: list[_Pending], lone: bool) -> None:
        started = time.perf_counter_ns()
        assert self._loop is not None
        span = None if self.tracer is None else self._batch_span(batch, started, self.tracer)
        future: asyncio.Future[_Ran] = self._loop.create_future()
        try:
            if span is None:
                future.set_result(self._work(instance, batch, lone))
            else:
                future.set_result(span.run(partial(self._work, instance, batch, lone)))
        except Exception as exc:
            future.set_exception(exc)
        self._finished(instance, batch, started, future, span=span)

    def _finished(
        self,
        instance: Instance,
        batch: list[_Pending],
        started: int,
        future: asyncio.Future[_Ran],
        *,
        span: BatchSpan | None = None,
    ) -> None:
        self._free.append(instance)
        exc = None if future.cancelled() else future.exception()
        if span is not None:
            span.end(rows=sum(p.rows for p in batch), error=exc)
        if future.cancelled() or exc is not None:
            self._failed(batch, exc)
        else:
            ran = future.result()
            size = sum(p.rows for p in batch)
            self.stats.record_batch(size, ran.input_ns, ran.infer_ns, ran.output_ns)
            if self._loop is not None:
                self._history = self.policy.learn(
                    self._history,
                    requests=len(batch),
                    rows=size,
                    compute_ns=ran.input_ns + ran.infer_ns + ran.output_ns,
                    now=self._loop.time(),
                )
            if ran.errors:  # failed first, so the loop below answers only the others
                for i, error in ran.errors.items():
                    if not batch[i].future.done():
                        batch[i].future.set_exception(error)
            for p, out in zip(batch, ran.results, strict=True):
                if not p.future.done():
                    p.future.set_result(BatchResult(out, started - p.enqueued_ns, size))
                self._notify(p)
        if self._pending and not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _failed(self, batch: list[_Pending], exc: BaseException | None) -> None:
        if len(batch) > 1 and not isinstance(exc, ModelUnavailable | Overloaded):
            # One bad request must not fail its neighbours: run each alone, so the
            # error lands only on the request that caused it.
            for p in reversed(batch):
                p.solo = True
                self._pending.appendleft(p)
            return
        if exc is None:
            error: ModelportError = ModelUnavailable(f"model '{self.name}' was stopped")
        elif isinstance(exc, ModelportError):
            error = exc
        else:
            error = InferenceFailed(f"model '{self.name}' failed: {type(exc).__name__}: {exc}")
        for p in batch:  # one request, or an error that is no request's own fault
            if not p.future.done():
                p.future.set_exception(error)
            self._notify(p)

    def _notify(self, p: _Pending) -> None:
        if p.timer is not None:  # answered or dropped before its deadline
            p.timer.cancel()
            p.timer = None
        if p.done is None:
            return
        try:
            p.done()
        except Exception as exc:  # as the loop does for a failing callback: log, go on
            if self._loop is not None:
                self._loop.call_exception_handler(
                    {
                        "message": f"model '{self.name}': a request's done callback failed",
                        "exception": exc,
                    }
                )

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
        while (self._pending or self.busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._timer is not None:
            self._timer.cancel()
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(
                    ModelUnavailable(f"model '{self.name}' was unloaded before it ran")
                )
            self._notify(item)
