"""An ensemble in model.yaml: steps that call other served models, Triton's
``ensemble_scheduling`` with the same fields::

    runtime: ensemble
    max_batch_size: 8
    inputs: [{name: RAW, datatype: FP32, shape: [4]}]
    outputs: [{name: SCORES, datatype: FP32, shape: [10]}]
    ensemble:
      step:
        - model_name: preprocess
          input_map: {INPUT0: RAW}        # the step model's input: an ensemble tensor
          output_map: {OUTPUT0: features}  # the step model's output: an ensemble tensor
        - model_name: classifier
          model_version: -1                # the latest (the default)
          input_map: {INPUT0: features}
          output_map: {OUTPUT0: SCORES}

Steps run in the order their data needs (:meth:`EnsembleSpec.ordered`), each through
its own model's batcher.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import Field, field_validator

from modelport.spec.base import Strict as _Strict

ENSEMBLE_RUNTIME = "ensemble"


class EnsembleStep(_Strict):
    """One step: a served model, and where its inputs come from and its outputs go."""

    model_name: str = Field(min_length=1)
    model_version: int = Field(default=-1, ge=-1)
    input_map: dict[str, str] = Field(default_factory=dict)
    output_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("model_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value == 0:
            raise ValueError("versions are positive integers; -1 (the default) is the latest")
        return value

    @property
    def version(self) -> str:
        """The version to call, as a request names it ("" for the latest)."""
        return "" if self.model_version == -1 else str(self.model_version)


class EnsembleSpec(_Strict):
    """The steps of a ``runtime: ensemble`` model (see the module docstring)."""

    step: tuple[EnsembleStep, ...] = Field(min_length=1)

    def ordered(self, inputs: Collection[str], outputs: Collection[str]) -> tuple[int, ...]:
        """The steps' indexes in an order that runs each after the steps whose outputs
        it reads (file order among those ready together); ValueError naming the step
        when a tensor comes from nowhere, from two places, or from a cycle."""
        made_by: dict[str, int] = {}
        for index, step in enumerate(self.step):
            for tensor in step.output_map.values():
                if tensor in inputs:
                    raise ValueError(
                        f"step {index} (model '{step.model_name}'): output_map writes "
                        f"'{tensor}', which is an input of the ensemble"
                    )
                if tensor in made_by:
                    raise ValueError(
                        f"step {index} (model '{step.model_name}'): output_map writes "
                        f"'{tensor}', which step {made_by[tensor]} writes too"
                    )
                made_by[tensor] = index
        needs: dict[int, set[int]] = {}
        for index, step in enumerate(self.step):
            needs[index] = set()
            for tensor in step.input_map.values():
                if tensor in inputs:
                    continue
                if tensor not in made_by:
                    raise ValueError(
                        f"step {index} (model '{step.model_name}'): input_map reads "
                        f"'{tensor}', which is neither an input of the ensemble nor any "
                        "step's output"
                    )
                needs[index].add(made_by[tensor])
        missing = [name for name in outputs if name not in made_by]
        if missing:
            raise ValueError(f"ensemble outputs {missing} are written by no step's output_map")
        order: list[int] = []
        while len(order) < len(self.step):
            ready = [i for i in needs if i not in order and needs[i] <= set(order)]
            if not ready:
                stuck = [i for i in needs if i not in order]
                raise ValueError(f"steps {stuck} read each other's outputs in a cycle")
            order.append(ready[0])
        return tuple(order)
