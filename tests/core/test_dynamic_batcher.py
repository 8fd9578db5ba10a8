"""Dynamic batching with real threads and a real event loop: the ``fake`` runtime (its
``delay_ms`` stands in for compute; ``batches`` records what it was given) and a real
ONNX MLP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from modelport.core.entries import LoadedVersion
from modelport.core.service import InferenceService
from modelport.errors import Cancelled, ErrorKind, InferenceFailed, ModelUnavailable, Overloaded
from modelport.runtimes.fake import FakeRuntime
from modelport.tensors import InferenceRequest, Tensor
from support.builders import mlp_onnx, write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture


def _fake_yaml(
    max_batch_size: int = 8,
    delay_ms: int = 100,
    batching: str = "{}",
    count: int = 1,
    shape: str = "[2]",
) -> str:
    return f"""\
runtime: fake
max_batch_size: {max_batch_size}
inputs: [{{name: x, datatype: FP32, shape: {shape}}}]
outputs: [{{name: y, datatype: FP32, shape: {shape}}}]
batching: {batching}
instances: {{count: {count}}}
parameters: {{delay_ms: {delay_ms}}}
"""


async def _fake(repo: Path, serve: Start, **options: object) -> InferenceService:
    write_model(repo, "m", _fake_yaml(**options), {"1/.keep": ""})  # type: ignore[arg-type]
    return await serve()


def _runtime(service: InferenceService, instance: int = 0) -> FakeRuntime:
    runtime = service.get_version("m").instances[instance].runtime
    assert isinstance(runtime, FakeRuntime)
    return runtime


def _rows(first: float, rows: int = 1, width: int = 2) -> np.ndarray:
    """Rows whose values say which request they belong to."""
    return (first + np.arange(rows * width, dtype=np.float32) / 100).reshape(rows, width)


async def _call(
    service: InferenceService, x: np.ndarray, parameters: dict[str, object] | None = None
) -> np.ndarray:
    request = InferenceRequest("m", (Tensor("x", "FP32", x),), parameters=parameters or {})
    response = await service.infer(request)
    return response.outputs[0].data


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (without sleeping a fixed time) until ``condition()`` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


async def _occupy(service: InferenceService, runtimes: Sequence[FakeRuntime]) -> asyncio.Task:
    """Start one request and wait until an instance is running it."""
    before = sum(len(r.batches) for r in runtimes)
    task = asyncio.create_task(_call(service, _rows(-1)))
    await _until(lambda: sum(len(r.batches) for r in runtimes) > before)
    return task


async def test_concurrent_requests_are_merged_and_split_back(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, max_batch_size=8)
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    # While the instance is busy, requests of 1, 3, 2, 2 and 3 rows pile up: 11 rows.
    sizes = [1, 3, 2, 2, 3]
    inputs = [_rows(i + 1, rows) for i, rows in enumerate(sizes)]
    outputs = await asyncio.gather(*(_call(service, x) for x in inputs))
    await first
    # The next free instance takes what fits in max_batch_size (8 rows, whole requests,
    # in arrival order), then the rest.
    assert runtime.batches == [1, 8, 3]
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(x, y)
    stats = service.get_version("m").stats
    assert sorted(stats.batches) == [1, 3, 8]
    assert stats.execution_count == 3 and stats.inference_count == 12
    assert stats.success.count == 6


async def test_a_lone_request_is_not_held_back(repo: Path, serve: Start) -> None:
    """max_queue_delay_us is 5 s here: a lone request on an idle model must not wait it."""
    service = await _fake(
        repo, serve, delay_ms=0, batching="{max_queue_delay_us: 5000000}", max_batch_size=8
    )
    for i in range(3):
        assert np.array_equal(await _call(service, _rows(i)), _rows(i))
    assert _runtime(service).batches == [1, 1, 1]
    stats = service.get_version("m").stats
    assert stats.queue.count == 3
    # Queue time is measured by the batcher itself; the bound is generous (a tenth of
    # the delay) yet far below what waiting for company would cost.
    assert stats.queue.ns / stats.queue.count < 0.5e9


async def test_queue_delay_gathers_more_for_a_small_batch(repo: Path, serve: Start) -> None:
    service = await _fake(
        repo, serve, delay_ms=100, max_batch_size=4, batching="{max_queue_delay_us: 5000000}"
    )
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    early = [asyncio.create_task(_call(service, _rows(i))) for i in (1, 2)]
    await first
    # The instance is free and two requests wait: it holds them (up to 5 s) for company,
    # and runs as soon as the batch reaches its target of 4 rows.
    late = [asyncio.create_task(_call(service, _rows(i))) for i in (3, 4)]
    results = await asyncio.gather(*early, *late)
    assert runtime.batches == [1, 4]
    for i, y in zip((1, 2, 3, 4), results, strict=True):
        assert np.array_equal(y, _rows(i))


async def test_preferred_batch_sizes_are_honoured(repo: Path, serve: Start) -> None:
    service = await _fake(
        repo, serve, max_batch_size=16, batching="{preferred_batch_sizes: [2, 4]}"
    )
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    inputs = [_rows(i + 1) for i in range(7)]
    outputs = await asyncio.gather(*(_call(service, x) for x in inputs))
    await first
    # Seven rows wait: cut to 4 (the largest preferred size that fits), then 3 waiting
    # rows are cut to 2, and the last one runs alone.
    assert runtime.batches == [1, 4, 2, 1]
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(x, y)


async def test_a_full_max_batch_beats_preferred_sizes(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, max_batch_size=6, batching="{preferred_batch_sizes: [4]}")
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    await asyncio.gather(*(_call(service, _rows(i)) for i in range(6)))
    await first
    assert runtime.batches == [1, 6]


async def test_different_shapes_are_never_mixed(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, shape="[-1]")
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    inputs = [_rows(1, 1, 2), _rows(2, 1, 3), _rows(3, 2, 2), _rows(4, 1, 3), _rows(5, 1, 5)]
    outputs = await asyncio.gather(*(_call(service, x) for x in inputs))
    await first
    # Width 2 (1 + 2 rows), then width 3 (1 + 1), then width 5: never concatenated.
    assert runtime.batches == [1, 3, 2, 1]
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(x, y)


async def test_different_parameters_are_never_mixed(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve)
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    params = [{"t": 1}, {"t": 2}, {"t": 1}, {}]
    await asyncio.gather(*(_call(service, _rows(i), p) for i, p in enumerate(params)))
    await first
    assert runtime.batches == [1, 2, 1, 1]


async def test_instances_run_in_parallel(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, delay_ms=500, count=2, max_batch_size=0, shape="[1, 2]")
    runtimes = [_runtime(service, 0), _runtime(service, 1)]
    start = time.perf_counter()
    results = await asyncio.gather(*(_call(service, _rows(i)) for i in range(2)))
    elapsed = time.perf_counter() - start
    # Each copy ran one of the two requests, at the same time: one after the other would
    # take 1 s; the bound leaves 400 ms of slack.
    assert [r.batches for r in runtimes] == [[1], [1]]
    assert elapsed < 0.9, f"two 500 ms batches on two instances took {elapsed:.2f} s"
    for i, y in enumerate(results):
        assert np.array_equal(y, _rows(i))


async def test_full_queue_is_refused_at_once(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, delay_ms=300, batching="{max_queue_size: 2}")
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    waiting = [asyncio.create_task(_call(service, _rows(i))) for i in (1, 2)]
    await _until(lambda: service.get_version("m").batcher.queue_depth == 2)
    with pytest.raises(Overloaded, match="overloaded: 2 requests already waiting") as info:
        await asyncio.wait_for(_call(service, _rows(3)), timeout=0.1)
    assert info.value.kind is ErrorKind.OVERLOADED and info.value.retry_after > 0
    assert [y.tolist() for y in await asyncio.gather(*waiting)] == [
        _rows(1).tolist(),
        _rows(2).tolist(),
    ]
    await first
    stats = service.get_version("m").stats
    assert stats.failures_by_reason == {"overloaded": 1}
    assert stats.success.count == 3


async def test_close_finishes_accepted_work_and_refuses_the_rest(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, delay_ms=200)
    loaded: LoadedVersion = service.get_version("m")
    first = await _occupy(service, [_runtime(service)])
    accepted = [asyncio.create_task(_call(service, _rows(i))) for i in (1, 2)]
    await _until(lambda: loaded.batcher.queue_depth == 2)
    closing = asyncio.create_task(loaded.batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(ModelUnavailable, match="is unloading"):
        await loaded.batcher.infer({"x": _rows(3)}, {})
    await closing
    assert np.array_equal(await first, _rows(-1))
    for i, task in zip((1, 2), accepted, strict=True):
        assert np.array_equal(await task, _rows(i))


async def test_close_past_its_drain_time_fails_what_waits_and_finishes_what_runs(
    repo: Path, serve: Start
) -> None:
    service = await _fake(repo, serve, delay_ms=400)
    loaded = service.get_version("m")
    first = await _occupy(service, [_runtime(service)])
    waiting = asyncio.create_task(_call(service, _rows(1)))
    await _until(lambda: loaded.batcher.queue_depth == 1)
    await loaded.batcher.close(drain_seconds=0.05)
    with pytest.raises(ModelUnavailable, match="unloaded before it ran"):
        await waiting
    # The batch already on its instance's thread cannot be interrupted: it finishes.
    assert (await first).shape[0] == 1


async def test_runtime_failure_fails_every_request(repo: Path, serve: Start) -> None:
    write_model(
        repo, "m", _fake_yaml().replace("delay_ms: 100", "fail_with: device lost"), {"1/.keep": ""}
    )
    service = await serve()
    results = await asyncio.gather(
        *(_call(service, _rows(i)) for i in range(3)), return_exceptions=True
    )
    for error in results:
        assert isinstance(error, InferenceFailed)
        assert error.message == "model 'm' failed: RuntimeError: device lost"
        assert error.kind is ErrorKind.INTERNAL
    # The merged batch failed, so each request was tried again alone before failing.
    assert _runtime(service).batches == [3, 1, 1, 1]
    assert service.get_version("m").stats.failures_by_reason == {"internal": 3}


# predict raises for any batch holding a negative number, and records the batch sizes.
FLAKY = """import time
import numpy as np

class Model:
    def setup(self, context):
        self.sizes = []

    def predict(self, inputs, parameters):
        self.sizes.append(len(inputs["x"]))
        time.sleep(parameters.get("sleep", 0))
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        if parameters.get("short"):
            return {"y": inputs["x"][:1] * 2}
        return {"y": inputs["x"] * 2}
"""


async def _flaky(repo: Path, serve: Start) -> tuple[InferenceService, list[int]]:
    yaml = _fake_yaml().replace("runtime: fake", "runtime: python")
    write_model(repo, "m", yaml, {"1/model.py": FLAKY})
    service = await serve()
    model = service.get_version("m").instances[0].runtime.model  # type: ignore[attr-defined]
    return service, model.sizes


async def test_a_failing_request_does_not_fail_its_batch_neighbours(
    repo: Path, serve: Start
) -> None:
    service, sizes = await _flaky(repo, serve)
    first = asyncio.create_task(_call(service, _rows(0), {"sleep": 0.1}))
    await _until(lambda: sizes == [1])
    inputs = [_rows(1), _rows(-5), _rows(2), _rows(-6), _rows(3)]
    results = await asyncio.gather(*(_call(service, x) for x in inputs), return_exceptions=True)
    await first
    # All five ran as one batch, which failed; then each alone: two failed, three did not.
    assert sizes == [1, 5, 1, 1, 1, 1, 1]
    for x, result in zip(inputs, results, strict=True):
        if x[0, 0] < 0:
            assert isinstance(result, InferenceFailed)
            assert result.message == "model 'm' failed: ValueError: negative input"
        else:
            assert isinstance(result, np.ndarray) and np.array_equal(result, x * 2)
    # The model keeps serving.
    assert np.array_equal(await _call(service, _rows(9)), _rows(9) * 2)
    stats = service.get_version("m").stats
    assert stats.success.count == 5 and stats.fail.count == 2


async def test_outputs_without_the_batch_rows_are_caught(repo: Path, serve: Start) -> None:
    """A runtime that answers a merged batch with too few rows cannot be split back:
    the batch fails, and its requests are run again alone (where one row is right)."""
    service, sizes = await _flaky(repo, serve)
    first = asyncio.create_task(_call(service, _rows(0), {"sleep": 0.1}))
    await _until(lambda: sizes == [1])
    inputs = [_rows(1), _rows(2), _rows(3)]
    results = await asyncio.gather(*(_call(service, x, {"short": True}) for x in inputs))
    await first
    assert sizes == [1, 3, 1, 1, 1]
    for x, y in zip(inputs, results, strict=True):
        assert np.array_equal(y, x * 2)


async def test_onnx_results_are_identical_batched_or_alone(repo: Path, serve: Start) -> None:
    write_model(repo, "m", "runtime: onnx\nmax_batch_size: 64\n")
    mlp_onnx(repo / "m" / "1" / "model.onnx")
    service = await serve()
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((rows, 256)).astype(np.float32) for rows in (1, 3, 1, 2, 1, 8)]

    async def run(x: np.ndarray) -> np.ndarray:
        request = InferenceRequest("m", (Tensor("INPUT0", "FP32", x),))
        return (await service.infer(request)).outputs[0].data

    alone = [await run(x) for x in inputs]
    stats = service.get_version("m").stats
    assert stats.execution_count == len(inputs)
    together = await asyncio.gather(*(run(x) for x in inputs))
    # Sent together, they all waited while the instance was idle for one loop turn:
    # one batch of all 16 rows.
    assert stats.execution_count == len(inputs) + 1 and 16 in stats.batches
    for x, a, b in zip(inputs, alone, together, strict=True):
        assert a.shape == b.shape == (len(x), 10)
        assert np.array_equal(a, b), f"max difference {np.abs(a - b).max()}"


async def test_done_is_called_once_each_future_is_resolved(repo: Path, serve: Start) -> None:
    """``start(request, done)``: the HTTP fast path answers from ``done``, which the
    batcher calls right after resolving the future; one that raises does not keep the
    others of its batch from being called."""
    service = await _fake(repo, serve, max_batch_size=8)
    first = await _occupy(service, [_runtime(service)])
    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    calls: list[tuple[int, bool]] = []
    started = []
    for i in range(3):

        def done(i: int = i) -> None:
            calls.append((i, started[i].future.done()))
            if i == 1:
                raise RuntimeError("a broken callback")

        x = _rows(i + 1)
        started.append(service.start(InferenceRequest("m", (Tensor("x", "FP32", x),)), done))
    await first
    await _until(lambda: len(calls) == 3)
    assert sorted(calls) == [(0, True), (1, True), (2, True)]
    for i, s in enumerate(started):
        assert np.array_equal(service.finish(s).outputs[0].data, _rows(i + 1))
    assert _runtime(service).batches == [1, 3]
    assert [str(e["exception"]) for e in errors] == ["a broken callback"]  # type: ignore[index]


async def test_done_is_called_for_a_request_that_never_ran(repo: Path, serve: Start) -> None:
    service = await _fake(repo, serve, delay_ms=400)
    loaded = service.get_version("m")
    first = await _occupy(service, [_runtime(service)])
    calls: list[bool] = []
    waiting = service.start(
        InferenceRequest("m", (Tensor("x", "FP32", _rows(1)),)),
        lambda: calls.append(waiting.future.done()),
    )
    await loaded.batcher.close(drain_seconds=0.05)
    assert calls == [True]
    with pytest.raises(ModelUnavailable, match="unloaded before it ran"):
        service.finish(waiting)
    assert (await first).shape[0] == 1


async def test_requests_cancelled_before_they_run_are_dropped(repo: Path, serve: Start) -> None:
    """A client that gives up (its request's future cancelled, as the native gRPC
    transport does on RST_STREAM) takes its request out of the batch: the model never
    computes it, its ``done`` still runs, and the others are answered as usual."""
    service = await _fake(repo, serve, delay_ms=200, max_batch_size=8)
    runtime = _runtime(service)
    first = await _occupy(service, [runtime])
    calls: list[int] = []
    started = [
        service.start(
            InferenceRequest("m", (Tensor("x", "FP32", _rows(i)),)), lambda i=i: calls.append(i)
        )
        for i in range(1, 6)
    ]
    for i in (0, 2, 4):  # requests 1, 3 and 5 give up while the first one runs
        started[i].future.cancel()
    await first
    await _until(lambda: len(calls) == 5)
    assert runtime.batches == [1, 2]  # 2 and 4 ran together; 1, 3 and 5 never ran
    assert np.array_equal(service.finish(started[1]).outputs[0].data, _rows(2))
    assert np.array_equal(service.finish(started[3]).outputs[0].data, _rows(4))
    for i in (0, 2, 4):
        with pytest.raises(Cancelled, match="cancelled before it was answered"):
            service.finish(started[i])
    assert service.get_version("m").batcher.queue_depth == 0
    assert service.get_version("m").stats.failures_by_reason == {"cancelled": 3}
