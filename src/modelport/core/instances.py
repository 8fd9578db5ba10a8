"""Model instances: each copy of a runtime with the one thread that runs it.

A dedicated thread per instance keeps a copy's work serial (as frameworks expect) and
lets ``instances.count`` copies run in parallel without blocking the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from modelport.core.runtime import (
    GatheredRequest,
    InlineRuntime,
    RequestOutcome,
    RequestRuntime,
    Runtime,
)
from modelport.errors import ModelUnavailable
from modelport.spec import ModelSpec

T = TypeVar("T")


class Instance:
    """One loaded runtime and its thread.

    ``inline`` is true when the runtime is an :class:`InlineRuntime` (it never calls
    back into the server), so the batcher may run a lone request on the event loop's own
    thread, through ``infer_lone`` on a quiet model (``core/batch_policy.py``).
    ``infer_requests`` is set when the loaded runtime takes a batch as its requests
    (a :class:`RequestRuntime` whose ``takes_requests`` is true).
    """

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self.inline = isinstance(runtime, InlineRuntime)
        self.infer_lone: Callable[
            [dict[str, np.ndarray], Mapping[str, Any]], dict[str, np.ndarray]
        ] = runtime.infer_inline if isinstance(runtime, InlineRuntime) else runtime.infer
        self.infer_requests: Callable[[Sequence[GatheredRequest]], list[RequestOutcome]] | None = (
            runtime.infer_requests
            if isinstance(runtime, RequestRuntime) and runtime.takes_requests
            else None
        )
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


@dataclass(frozen=True, slots=True)
class Gpus:
    """The GPUs models may be placed on, and how the server learnt of them.

    ``source`` ends the reason a GPU model is UNAVAILABLE with, so it says where the list
    came from ("declared by the gpus setting") or why it is empty ("nvidia-ml-py is not
    installed"). ``modelport.observability.gpus`` discovers them; the core only places on them.
    """

    ids: tuple[int, ...] = ()
    source: str = "none declared"


NO_GPUS = Gpus()


def devices_for(spec: ModelSpec, gpus: Gpus = NO_GPUS) -> list[str]:
    """The device of each of ``instances.count`` copies: "cpu", or "cuda:N" round-robin
    over the GPUs asked for (``instances.gpus``, else every GPU there is).

    ``device: gpu`` on a server without the GPUs asked for raises ModelUnavailable naming
    the ids asked and the ids there; ``device: auto`` takes the GPUs asked for that are
    there, and the CPU when none is.
    """
    wanted = spec.instances
    count = wanted.count
    if wanted.device == "cpu":
        return ["cpu"] * count
    asked = tuple(dict.fromkeys(wanted.gpus))  # order kept, repeats dropped
    if wanted.device == "auto":
        usable = [g for g in asked if g in gpus.ids] if asked else list(gpus.ids)
        if not usable:
            return ["cpu"] * count
        return [f"cuda:{usable[i % len(usable)]}" for i in range(count)]
    missing = [g for g in asked if g not in gpus.ids]
    if not gpus.ids:
        raise ModelUnavailable(
            f"model '{spec.name}' needs a GPU (instances.device: gpu), but this server has "
            f"none ({gpus.source}); serve it on a GPU host (pip install 'modelport[gpu]'), "
            "declare the GPUs with MODELPORT_GPUS=0,1, or set instances.device: auto (a GPU "
            "when there is one) or cpu"
        )
    if missing:
        raise ModelUnavailable(
            f"model '{spec.name}' asks for GPUs {list(asked)} (instances.gpus), but this "
            f"server has GPUs {list(gpus.ids)} ({gpus.source}), so not {missing}; list only "
            "ids it has, or leave instances.gpus out to spread over them all"
        )
    usable = list(asked or gpus.ids)
    return [f"cuda:{usable[i % len(usable)]}" for i in range(count)]
