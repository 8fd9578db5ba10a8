"""Deadlines and priority levels in the queue (issue 18 item 8), with the real batcher,
threads and event loop: the ``fake`` runtime's ``delay_ms`` stands in for compute, one
instance, so the order in which requests finish is the order they ran.

- a request still waiting when its deadline passes is dropped (DeadlineExceeded), never
  run; one already running finishes;
- ``priority_levels``: level 1 runs first; a full queue sheds the lowest level first;
- bad ``timeout`` / ``priority`` values are InvalidInput; a bad spec is a SpecError."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from modelport.core.service import InferenceService
from modelport.errors import DeadlineExceeded, InvalidInput, Overloaded, SpecError
from modelport.runtimes.fake import FakeRuntime
from modelport.spec import parse_spec
from modelport.tensors import InferenceRequest, Tensor
from support.builders import add_sub_onnx, write_model

Start = Callable[..., Awaitable[InferenceService]]

pytestmark = pytest.mark.timeout(60)


def _yaml(*, delay_ms: int, queue: int = 64, levels: int = 0, default: int = 0) -> str:
    return f"""\
runtime: fake
max_batch_size: 0
inputs: [{{name: x, datatype: FP32, shape: [2]}}]
outputs: [{{name: y, datatype: FP32, shape: [2]}}]
batching: {{max_queue_size: {queue}, priority_levels: {levels}, default_priority_level: {default}}}
parameters: {{delay_ms: {delay_ms}}}
"""


def _request(value: float, **parameters: object) -> InferenceRequest:
    x = np.full(2, value, dtype=np.float32)
    return InferenceRequest("m", (Tensor("x", "FP32", x),), parameters=dict(parameters))


def _runs(service: InferenceService) -> int:
    runtime = service.get_version("m").instances[0].runtime
    assert isinstance(runtime, FakeRuntime)
    return len(runtime.batches)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


async def _busy(service: InferenceService) -> asyncio.Task[object]:
    """One request running on the only instance."""
    before = _runs(service)
    task = asyncio.create_task(service.infer(_request(-1)))
    await _until(lambda: _runs(service) > before)
    return task


async def test_a_request_past_its_deadline_in_the_queue_is_dropped_unrun(
    repo: Path, serve: Start
) -> None:
    write_model(repo, "m", _yaml(delay_ms=300), {"1/.keep": ""})
    service = await serve()
    running = await _busy(service)
    with pytest.raises(DeadlineExceeded, match="past its deadline"):
        await service.infer(_request(1, timeout=30_000))  # 30 ms, in microseconds
    # The same through a transport's deadline (grpc-timeout, Request-Timeout).
    late = InferenceRequest(
        "m",
        (Tensor("x", "FP32", np.zeros(2, np.float32)),),
        deadline_ns=time.monotonic_ns() + 30_000_000,
    )
    with pytest.raises(DeadlineExceeded):
        await service.infer(late)
    await running
    assert _runs(service) == 1  # neither dropped request ran
    counters = service.get_version("m").stats.counters()
    assert counters["failures_by_reason"]["deadline_exceeded"] == 2
    # The model goes on serving, and a deadline it can meet changes nothing.
    answer = await service.infer(_request(2, timeout=5_000_000))
    np.testing.assert_array_equal(answer.outputs[0].data, np.full(2, 2, np.float32))


async def test_a_request_already_running_finishes_after_its_deadline(
    repo: Path, serve: Start
) -> None:
    write_model(repo, "m", _yaml(delay_ms=120), {"1/.keep": ""})
    service = await serve()
    answer = await service.infer(_request(3, timeout=10_000))  # runs at once, 120 ms long
    assert answer.outputs[0].data[0] == 3


async def test_an_answered_request_is_not_held_until_its_deadline(repo: Path, serve: Start) -> None:
    # The deadline's timer goes once the request is taken: left to fire in a minute, it
    # would keep every request's inputs in memory for that minute.
    write_model(repo, "add", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(repo / "add" / "1" / "model.onnx", width=4)
    service = await serve()
    x = np.ones((1, 4), np.float32)
    kept = weakref.ref(x)
    request = InferenceRequest(
        "add",
        (Tensor("INPUT0", "FP32", x), Tensor("INPUT1", "FP32", np.ones((1, 4), np.float32))),
        parameters={"timeout": 60_000_000},  # a minute, in microseconds
    )
    answer = await service.infer(request)
    assert answer.outputs[0].data.tolist() == [[2.0] * 4]
    del x, request, answer
    gc.collect()
    assert kept() is None, "the answered request's inputs are still held"


async def test_priority_levels_run_first_and_shed_the_lowest_when_full(
    repo: Path, serve: Start
) -> None:
    write_model(repo, "m", _yaml(delay_ms=60, queue=2, levels=2, default=2), {"1/.keep": ""})
    service = await serve()
    finished: list[float] = []

    async def call(value: float, **parameters: object) -> object:
        response = await service.infer(_request(value, **parameters))
        finished.append(float(response.outputs[0].data[0]))
        return response

    running = await _busy(service)
    low_old = asyncio.create_task(call(10))  # the default level: 2
    low_new = asyncio.create_task(call(11, priority=2))
    await _until(lambda: service.get_version("m").batcher.queue_depth == 2)
    high = asyncio.create_task(call(1, priority=1))  # full queue: sheds the newest low
    await asyncio.gather(running, high, low_old, low_new, return_exceptions=True)
    assert isinstance(low_new.exception(), Overloaded)
    assert "gave its place to one of level 1" in str(low_new.exception())
    assert finished == [1, 10]  # the high one ran before the older low one
    # A low request meeting a full queue of high ones is refused, not let in.
    running = await _busy(service)
    highs = [asyncio.create_task(call(20 + i, priority=1)) for i in range(2)]
    await _until(lambda: service.get_version("m").batcher.queue_depth == 2)
    with pytest.raises(Overloaded, match="max_queue_size"):
        await service.infer(_request(30, priority=2))
    await asyncio.gather(running, *highs)


async def test_under_overload_high_priority_keeps_its_latency(repo: Path, serve: Start) -> None:
    """Every 10 ms, five low and one high request, on a model that answers one per 5 ms
    with 8 places in its queue (lows arrive at 2.5x what it can do): every high one is
    answered, the lows are shed. The latencies are printed (pytest -s), not asserted."""
    write_model(repo, "m", _yaml(delay_ms=5, queue=8, levels=3), {"1/.keep": ""})
    service = await serve()
    latencies: dict[int, list[float]] = {1: [], 3: []}
    shed: dict[int, int] = {1: 0, 3: 0}

    async def call(level: int) -> None:
        begun = time.perf_counter()
        try:
            await service.infer(_request(level, priority=level))
        except Overloaded:
            shed[level] += 1
            return
        latencies[level].append((time.perf_counter() - begun) * 1000)

    calls = []
    for i in range(72):
        calls.append(asyncio.ensure_future(call(1 if i % 6 == 5 else 3)))
        if i % 6 == 5:
            await asyncio.sleep(0.01)
    await asyncio.gather(*calls)
    assert shed[1] == 0 and len(latencies[1]) == 12
    assert shed[3] > 0
    print(
        f"high: {len(latencies[1])} answered, p50 {statistics.median(latencies[1]):.1f} ms; "
        f"low: {len(latencies[3])} answered, {shed[3]} shed, "
        f"p50 {statistics.median(latencies[3] or [0]):.1f} ms"
    )


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"priority": 1.5}, "priority"),
    ],
)
async def test_bad_queue_parameters_are_invalid_input(
    repo: Path, serve: Start, parameters: dict[str, object], named: str
) -> None:
    write_model(repo, "m", _yaml(delay_ms=0), {"1/.keep": ""})
    service = await serve()
    with pytest.raises(InvalidInput, match=f"parameter '{named}' must be a non-negative integer"):
        await service.infer(_request(1, **parameters))


def test_a_default_level_outside_the_levels_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="default_priority_level 4 is not one of the 3"):
        parse_spec("m", _yaml(delay_ms=0, levels=3, default=4), "m/model.yaml")
