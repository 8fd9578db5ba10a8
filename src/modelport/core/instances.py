"""Model instances: each copy of a runtime with the one thread that runs it.

A dedicated thread per instance keeps a copy's work serial (as frameworks expect) and
lets ``instances.count`` copies run in parallel without blocking the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from modelport.core.runtime import Runtime


class Instance:
    """One loaded runtime and its thread. ``run`` hops off the event loop for the batch."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.runtime.infer, inputs, parameters)

    def run_blocking(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return self._thread.submit(self.runtime.infer, inputs, parameters).result()

    def close(self) -> None:
        """Unload the runtime once its thread has finished what it was running."""
        self._thread.submit(self.runtime.unload).result()
        self._thread.shutdown(wait=True)
