"""Model instances: each copy of a runtime with the one thread that runs it.

A dedicated thread per instance keeps a copy's work serial (as frameworks expect) and
lets ``instances.count`` copies run in parallel without blocking the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from modelport.core.runtime import Runtime
from modelport.spec import ModelSpec

T = TypeVar("T")


class Instance:
    """One loaded runtime and its thread.

    ``inline`` is true when the runtime says a call may run on the event loop's own
    thread (``runs_inline = True``: it never calls back into the server); the batcher
    uses that for a lone request whose measured compute is shorter than a thread hop.
    """

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self.inline = bool(getattr(runtime, "runs_inline", False))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def call(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``work`` on this instance's thread; the future resolves on the loop."""
        return asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def run(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return await self.call(lambda: self.runtime.infer(inputs, parameters))

    def run_blocking(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return self._thread.submit(self.runtime.infer, inputs, parameters).result()

    def close(self) -> None:
        """Unload the runtime once its thread has finished what it was running."""
        self._thread.submit(self.runtime.unload).result()
        self._thread.shutdown(wait=True)


def devices_for(spec: ModelSpec) -> list[str]:
    """The device of each instance: "cpu", or "cuda:N" spread over ``instances.gpus``."""
    count = spec.instances.count
    if spec.instances.device == "cpu":
        return ["cpu"] * count
    gpus = spec.instances.gpus or (0,)
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(count)]
