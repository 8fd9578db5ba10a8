"""The Runtime protocol: the one interface every way of executing a model implements.

A runtime is created per model version and per instance by a :data:`RuntimeFactory`
given a :class:`RuntimeContext`. The core calls ``load`` once (in a worker thread),
then ``infer`` with whole batches from the instance's own thread, then ``unload``.
``runtimes/fake.py`` is the smallest complete example. A runtime that never calls back
into the server may also be an :class:`InlineRuntime`, so a lone small request can run
on the event loop's own thread. A runtime whose model wants the batch as the requests
it was gathered from (Triton's python backend) is a :class:`RequestRuntime`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from modelport.core.tracing import Tracer
from modelport.errors import ModelportError, SpecError
from modelport.spec import ModelSpec, TensorSpec


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs as the model itself sees them, batch dimension excluded."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class ModelCaller(Protocol):
    """Lets a runtime (a python pipeline) call other served models from its own thread."""

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], version: str = ""
    ) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """What a runtime is told about the copy it is asked to be."""

    spec: ModelSpec
    version: int
    model_dir: Path
    version_dir: Path
    instance: int
    device: str
    models: ModelCaller
    # Spans of hops to other servers (remote and cluster runtimes); None: tracing is off.
    tracer: Tracer | None = None

    def model_path(self, usual: str) -> Path:
        """The model's file (or folder) in the version folder: the spec's ``model_file``
        (Triton's default_model_filename), else the runtime's ``usual`` name."""
        return self.version_dir / (self.spec.model_file or usual)


class Runtime(Protocol):
    """How the core runs a model: one object per model version and instance.

    ``load``, ``infer`` and ``unload`` are called from the instance's own thread, one at
    a time, so an implementation needs no locks of its own.
    """

    def load(self) -> None:
        """Read the model files and get ready to run; raise SpecError if they are unusable."""

    def signature(self) -> Signature:
        """The inputs and outputs the loaded model has (may be empty if it cannot tell)."""

    def infer(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Run one batch. Arrays carry the batch dimension when the model batches."""

    def unload(self) -> None:
        """Release what ``load`` took."""


@runtime_checkable
class InlineRuntime(Runtime, Protocol):
    """A runtime the batcher may call on the event loop's own thread.

    Implementing it declares that ``infer`` never calls back into the server (a python
    pipeline calling other models must not: it would wait on the loop it blocks). The
    batcher then runs a lone request whose measured compute is shorter than a thread
    hop inline (``core/batch_policy.py``), through ``infer_inline`` while the model is
    quiet and through ``infer`` otherwise.
    """

    def infer_inline(
        self, inputs: dict[str, np.ndarray], parameters: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Run one lone request; a runtime with a faster way for one request than for
        a batch (ONNX Runtime's spinning session) uses it here, else calls ``infer``."""


@dataclass(frozen=True, slots=True)
class GatheredRequest:
    """One client request of a batch, as a :class:`RequestRuntime` gets it: its own
    arrays (with the batch dimension when the model batches), not merged with others."""

    inputs: dict[str, np.ndarray]
    parameters: Mapping[str, Any]
    id: str = ""
    outputs: tuple[str, ...] = ()  # the outputs the client named; () when it named none


# A request's outputs, or the error that fails it (and only it).
RequestOutcome = dict[str, np.ndarray] | ModelportError


@runtime_checkable
class RequestRuntime(Runtime, Protocol):
    """A runtime whose model takes a batch as the list of requests the batcher gathered
    (Triton's python backend: ``execute(requests)``), answering each on its own.

    The batcher neither concatenates nor splits for it, and an error outcome fails only
    its own request. ``takes_requests`` is read once the runtime has loaded: the python
    runtime is one only when its model.py holds a ``TritonPythonModel``.
    """

    @property
    def takes_requests(self) -> bool:
        """Whether the loaded model wants :meth:`infer_requests` rather than ``infer``."""

    def infer_requests(self, requests: Sequence[GatheredRequest]) -> list[RequestOutcome]:
        """Run the gathered requests at once; one outcome per request, in order."""


RuntimeFactory = Callable[[RuntimeContext], Runtime]


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetStats:
    """One place a runtime sends its batches to (a replica of a remote model), as the
    metrics show it: ``target`` is its URL without credentials."""

    target: str
    up: bool
    in_flight: int
    successes: int
    failures: int
    ejections: int


@runtime_checkable
class ReportsTargets(Protocol):
    """A runtime that spreads its batches over several targets (a ``remote`` model's
    replicas) and counts each: the metrics label them by target."""

    def targets(self) -> tuple[TargetStats, ...]:
        """Each target's state and counters now (the same for every instance of a
        model version, which share them)."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset
    limits it), for sizing thread pools."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_signature(spec: ModelSpec, where: Path, found: Signature) -> Signature:
    """The signature served: model.yaml's declarations, checked against what the model
    file has, or the file's own when nothing is declared. ``where`` names model.yaml."""
    for field_name, declared, actual in (
        ("inputs", spec.inputs, found.inputs),
        ("outputs", spec.outputs, found.outputs),
    ):
        if declared and actual:
            known = {t.name for t in actual}
            missing = [t.name for t in declared if t.name not in known]
            if missing:
                raise SpecError(
                    f"{where}: field '{field_name}': {missing} not in the model file, "
                    f"which has {sorted(known)}"
                )
    inputs = spec.inputs or found.inputs
    outputs = spec.outputs or found.outputs
    if not inputs:
        raise SpecError(
            f"{where}: field 'inputs': the {spec.runtime} runtime cannot tell its inputs; "
            "declare them (name, datatype, shape)"
        )
    return Signature(tuple(inputs), tuple(outputs))
