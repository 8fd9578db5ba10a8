"""Triton's ``reshape``: a tensor served with one shape and given to (or taken from) the
model with another, of the same elements (``dims: [1]`` served, ``reshape: {shape: []}``
for the model). A runtime is wrapped, not changed: :func:`reshaping` puts a
:class:`ReshapingRuntime` around it when any of the spec's tensors has a ``reshape``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.core.runtime import InlineRuntime, Runtime, Signature
from modelport.spec import ModelSpec


def reshaping(runtime: Runtime, spec: ModelSpec) -> Runtime:
    """``runtime``, or a wrapper of it that reshapes the tensors whose spec says to."""
    if not any(t.reshape is not None for t in (*spec.inputs, *spec.outputs)):
        return runtime
    if isinstance(runtime, InlineRuntime):
        return InlineReshapingRuntime(runtime, spec)
    return ReshapingRuntime(runtime, spec)


class ReshapingRuntime:
    """A runtime whose inputs go in with their ``reshape`` and whose outputs come out
    with their served shape (the batch dimension, where the model batches, kept)."""

    def __init__(self, runtime: Runtime, spec: ModelSpec) -> None:
        self.runtime = runtime
        self._batched = spec.batches
        # Served input name -> the model's shape; output name -> the served shape.
        self._into = {t.name: t.reshape for t in spec.inputs if t.reshape is not None}
        self._out_of = {t.name: t.shape for t in spec.outputs if t.reshape is not None}

    def load(self) -> None:
        self.runtime.load()

    def signature(self) -> Signature:
        return self.runtime.signature()

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        return self._served(self.runtime.infer(self._model_inputs(inputs), parameters))

    def unload(self) -> None:
        self.runtime.unload()

    def _model_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: self._reshaped(a, self._into.get(n)) for n, a in inputs.items()}

    def _served(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: self._reshaped(np.asarray(a), self._out_of.get(n)) for n, a in outputs.items()}

    def _reshaped(self, array: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
        if shape is None:
            return array
        if self._batched:
            return array.reshape((array.shape[0], *shape))
        return array.reshape(shape)


class InlineReshapingRuntime(ReshapingRuntime):
    """:class:`ReshapingRuntime` around an :class:`InlineRuntime`, inline as it is."""

    def __init__(self, runtime: InlineRuntime, spec: ModelSpec) -> None:
        super().__init__(runtime, spec)
        self.inline_runtime = runtime

    def infer_inline(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        model_inputs = self._model_inputs(inputs)
        return self._served(self.inline_runtime.infer_inline(model_inputs, parameters))
