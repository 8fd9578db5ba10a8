"""The ``ensemble`` runtime: one request through several served models, Triton's
``ensemble_scheduling`` (a config.pbtxt's, or an ``ensemble:`` section of model.yaml;
see :mod:`modelport.spec.ensemble`).

Each step calls its model through the server (the runtime context's ``models``), so the
step is validated, batched with the model's other requests and counted in its own
statistics and metrics, as any request to it; the ensemble counts its own requests.
Steps run in the order their data needs. A step that fails fails the request, with an
error of the same kind that names the ensemble, the step and its model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.core.runtime import RuntimeContext, Signature
from modelport.errors import (
    InferenceFailed,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    RetryLater,
    SpecError,
)
from modelport.spec import EnsembleStep


class EnsembleRuntime:
    """Runs an ensemble's steps; never inline, since every step calls back into the
    server (its instance thread waits on the event loop)."""

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self._steps: tuple[tuple[int, EnsembleStep], ...] = ()

    def load(self) -> None:
        spec = self.context.spec
        if spec.ensemble is None:
            raise SpecError(f"model '{spec.name}': runtime: ensemble needs an 'ensemble' section")
        order = spec.ensemble.ordered([t.name for t in spec.inputs], [t.name for t in spec.outputs])
        self._steps = tuple((index, spec.ensemble.step[index]) for index in order)

    def signature(self) -> Signature:
        return Signature(self.context.spec.inputs, self.context.spec.outputs)

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for index, step in self._steps:
            # An optional input the request left out stays out; the step's model decides.
            given = {n: tensors[s] for n, s in step.input_map.items() if s in tensors}
            try:
                produced = self.context.models.infer(step.model_name, given, step.version)
            except ModelportError as exc:
                raise self._step_error(index, step, exc) from exc
            for output, target in step.output_map.items():
                if output not in produced:
                    raise InferenceFailed(
                        f"ensemble '{self.context.spec.name}' step {index} (model "
                        f"'{step.model_name}'): output_map names output '{output}', which "
                        f"the model does not have (it has {sorted(produced)})"
                    )
                tensors[target] = produced[output]
        return {t.name: tensors[t.name] for t in self.context.spec.outputs}

    def unload(self) -> None:
        self._steps = ()

    def _step_error(self, index: int, step: EnsembleStep, exc: ModelportError) -> ModelportError:
        message = (
            f"ensemble '{self.context.spec.name}' step {index} (model '{step.model_name}') "
            f"failed: {exc.message}"
        )
        if isinstance(exc, RetryLater):
            return type(exc)(message, exc.retry_after)
        if isinstance(exc, ModelNotFound):
            # The ensemble is there; what it needs is not: not the client's 404.
            return ModelUnavailable(message)
        return type(exc)(message)
