"""The batcher's timing rules, driven directly: the echo rule and inline execution.

These build a DynamicBatcher over a small recording runtime, so each rule is seen on
its own, with windows long enough that a loaded machine cannot flip the outcome.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.core.batch_policy import QUIET_S
from modelport.core.batcher import DynamicBatcher
from modelport.core.instances import Instance
from modelport.core.runtime import InlineRuntime, Signature
from modelport.core.stats import ModelStats
from modelport.spec import BatchingSpec


class Recorder:
    """Echoes ``x`` to ``y``; records batch sizes and the thread each batch ran on."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.threads: list[int] = []

    def load(self) -> None:
        pass

    def signature(self) -> Signature:
        return Signature((), ())

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["x"]))
        self.threads.append(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        return {"y": inputs["x"] * 2}

    def unload(self) -> None:
        pass


class InlineRecorder(Recorder):
    """A Recorder that is an InlineRuntime: it may run on the loop's thread."""

    def infer_inline(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return self.infer(inputs, parameters)


def _batcher(runtime: Recorder, **options: Any) -> DynamicBatcher:
    batcher = DynamicBatcher(
        "m",
        [Instance(runtime, "m-0")],
        max_batch_size=8,
        batching=BatchingSpec(),
        stats=ModelStats(),
        **options,
    )
    batcher.start()
    return batcher


def _row(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


async def test_clients_coming_back_after_a_batch_are_batched_together() -> None:
    # A 0.4 s batch opens a 0.1 s echo window (a quarter of its compute).
    runtime = Recorder(delay=0.4)
    batcher = _batcher(runtime, echo_cap_s=1.0)
    first = await asyncio.gather(*(batcher.infer(_row(i), {}) for i in range(4)))
    assert runtime.batches == [4]
    # The four clients come back, one at once and three 30 ms later: without the rule
    # the first would run alone and the three after it.
    straggler = asyncio.create_task(batcher.infer(_row(10), {}))
    await asyncio.sleep(0.03)
    rest = await asyncio.gather(*(batcher.infer(_row(11 + i), {}) for i in range(3)))
    await straggler
    assert runtime.batches == [4, 4]
    assert [float(r.outputs["y"][0, 0]) for r in rest] == [22.0, 24.0, 26.0]
    assert all(r.batch_size == 4 for r in first)
    await batcher.close()


async def test_a_lone_request_on_an_idle_model_never_waits() -> None:
    runtime = Recorder(delay=0.2)
    batcher = _batcher(runtime, echo_cap_s=1.0)
    result = await batcher.infer(_row(1), {})
    assert runtime.batches == [1]
    assert result.queue_ns < 50_000_000  # no window: it was scheduled at once
    # After a lone request there is no echo window either.
    result = await batcher.infer(_row(2), {})
    assert result.queue_ns < 50_000_000
    await batcher.close()


async def test_a_straggler_after_the_echo_window_runs_alone() -> None:
    runtime = Recorder(delay=0.2)
    batcher = _batcher(runtime, echo_cap_s=1.0)
    await asyncio.gather(*(batcher.infer(_row(i), {}) for i in range(3)))
    await asyncio.sleep(0.15)  # the window was 0.05 s
    result = await batcher.infer(_row(9), {})
    assert runtime.batches == [3, 1]
    assert result.queue_ns < 50_000_000
    await batcher.close()


async def test_small_lone_requests_run_inline_and_batches_on_the_thread() -> None:
    runtime = InlineRecorder(delay=0.0)
    batcher = _batcher(runtime)
    assert isinstance(runtime, InlineRuntime)
    loop_thread = threading.get_ident()
    await batcher.infer(_row(1), {})  # compute unknown yet: runs on the instance thread
    assert runtime.threads[-1] != loop_thread
    await batcher.infer(_row(2), {})  # measured small: runs on the loop's thread
    assert runtime.threads[-1] == loop_thread
    # Company waiting: the batch goes to the instance thread.
    await asyncio.gather(*(batcher.infer(_row(i), {}) for i in range(5)))
    assert runtime.batches[-1] == 5
    assert runtime.threads[-1] != loop_thread
    await batcher.close()


async def test_runtimes_that_call_back_never_run_inline() -> None:
    runtime = Recorder(delay=0.0)
    assert not isinstance(runtime, InlineRuntime)
    batcher = _batcher(runtime)
    for i in range(3):
        await batcher.infer(_row(i), {})
    assert threading.get_ident() not in runtime.threads
    await batcher.close()


class LoneRecorder(Recorder):
    """A runtime with a lone path of its own (as ONNX Runtime's spinning session)."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.lone: list[int] = []

    def infer_inline(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        self.lone.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}


async def test_lone_requests_take_the_lone_path_only_while_the_model_is_quiet() -> None:
    runtime = LoneRecorder()
    batcher = _batcher(runtime)
    await batcher.infer(_row(1), {})  # compute unknown yet: the instance thread
    result = await batcher.infer(_row(2), {})  # small and quiet: the lone path
    assert runtime.lone == [1]
    assert float(result.outputs["y"][0, 0]) == 4.0
    # A batch of several: busy for QUIET_S, so a lone request right after it runs inline
    # through the usual infer (no spinning threads while others want the CPU).
    await asyncio.gather(*(batcher.infer(_row(i), {}) for i in range(4)))
    await batcher.infer(_row(5), {})
    assert runtime.lone == [1]
    assert runtime.threads[-1] == threading.get_ident()
    await asyncio.sleep(QUIET_S + 0.1)
    await batcher.infer(_row(6), {})
    assert runtime.lone == [1, 1]
    await batcher.close()
