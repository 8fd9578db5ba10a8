"""A runtime for tests and demos: echoes input *i* to output *i*.

``model.yaml`` parameters: ``delay_ms`` (sleep per batch, standing in for compute) and
``fail_with`` (raise that message on every batch). ``batches`` records the batch sizes
it was given, so tests can see what the batcher did.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature
from modelport.tensors import numpy_dtype


class FakeRuntime:
    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.batches: list[int] = []
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    def signature(self) -> Signature:
        return Signature(self.context.spec.inputs, self.context.spec.outputs)

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        params = self.context.spec.parameters
        arrays = list(inputs.values())
        self.batches.append(arrays[0].shape[0] if arrays and arrays[0].ndim else 1)
        if params.get("delay_ms"):
            time.sleep(float(params["delay_ms"]) / 1000)
        if params.get("fail_with"):
            raise RuntimeError(str(params["fail_with"]))
        by_position = [inputs[t.name] for t in self.context.spec.inputs]
        outputs: dict[str, np.ndarray] = {}
        for i, out in enumerate(self.context.spec.outputs):
            source = by_position[min(i, len(by_position) - 1)]
            dtype = numpy_dtype(out.datatype)
            outputs[out.name] = source if source.dtype == dtype else source.astype(dtype)
        return outputs

    def unload(self) -> None:
        self.loaded = False
