"""A model's traffic (``traffic`` and ``shadow`` in model.yaml, ``spec/traffic.py``):
which target answers each request that names no version, which requests are copied to
the shadow, and how the copies' answers compared.

The split is a smooth weighted round robin (nginx's): over any run of ``sum(weights)``
requests each target gets exactly its weight, interleaved, so a 90/10 split is 90/10
over 100 requests already, not only on average. The shadow's share is kept the same
way: a copy each time the running share passes 100 %.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from modelport.core.batcher import BatchResult
from modelport.core.entries import LoadedVersion
from modelport.core.validation import checked_inputs
from modelport.errors import ModelNotFound, ModelportError, ModelUnavailable
from modelport.spec import ModelSpec
from modelport.tensors import InferenceRequest

# A serving version by model name and version ("": the default): the registry's ``get``.
VersionLookup = Callable[[str, str], LoadedVersion]


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """Where requests may go: a version of the model itself, or another served model."""

    key: str  # as model.yaml names it: "2", or "resnet_fleet"
    version: int | None
    model: str

    @classmethod
    def parse(cls, key: str) -> TrafficTarget:
        return cls(key, int(key), "") if key.isdigit() else cls(key, None, key)


class WeightedRoundRobin:
    """Smooth weighted round robin over targets (see the module docstring)."""

    def __init__(self, weights: Mapping[TrafficTarget, int]) -> None:
        self._weights = [(t, w) for t, w in weights.items() if w > 0]
        self._total = sum(w for _, w in self._weights)
        self._current = [0] * len(self._weights)

    def next(self) -> TrafficTarget:
        best = 0
        for i, (_, weight) in enumerate(self._weights):
            self._current[i] += weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return self._weights[best][0]


@dataclass(frozen=True, slots=True)
class RouteCount:
    """Requests the split sent to ``target``, answered by ``version`` (that model's)."""

    target: str
    version: int


@dataclass(frozen=True, slots=True)
class Comparison:
    """Shadow copies of requests ``version`` answered, sent to ``target``, by outcome:
    ``agree``, ``disagree``, or ``failed`` (the copy got no answer to compare)."""

    version: int
    target: str
    outcome: str


@dataclass(slots=True, eq=False)
class ModelTraffic:
    """One model's split, shadow and their counters; rebuilt when its spec changes.
    Used from the event loop only (the service's ``start`` and futures' callbacks)."""

    model: str
    spec: ModelSpec
    split: WeightedRoundRobin | None = None
    shadow: TrafficTarget | None = None
    routed: dict[RouteCount, int] = field(default_factory=dict)
    compared: dict[Comparison, int] = field(default_factory=dict)
    _credit: float = 0.0

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelTraffic:
        weights = {TrafficTarget.parse(k): w for k, w in spec.traffic.items()}
        return cls(
            model=spec.name,
            spec=spec,
            split=WeightedRoundRobin(weights) if weights else None,
            shadow=TrafficTarget.parse(spec.shadow.target) if spec.shadow else None,
        )

    def answering(self, lookup: VersionLookup) -> LoadedVersion:
        """The version that answers the next request: the split's pick, or the model's
        default version without a split."""
        if self.split is None:
            return lookup(self.model, "")
        target = self.split.next()
        loaded = self.resolve(target, lookup)
        key = RouteCount(target.key, loaded.version)
        self.routed[key] = self.routed.get(key, 0) + 1
        return loaded

    def resolve(self, target: TrafficTarget, lookup: VersionLookup) -> LoadedVersion:
        if target.version is None:
            return lookup(target.model, "")
        try:
            return lookup(self.model, str(target.version))
        except ModelNotFound:
            raise ModelUnavailable(
                f"model '{self.model}' sends requests to its version {target.version} "
                "(traffic or shadow in its model.yaml), which does not serve; serve it "
                "(e.g. version_policy: {all: true})"
            ) from None

    def copy(
        self,
        request: InferenceRequest,
        primary: asyncio.Future[BatchResult],
        answering: LoadedVersion,
        lookup: VersionLookup,
        max_elements: int,
    ) -> None:
        """Copy the request to the shadow, if it is its turn and the shadow did not
        answer it already; the comparison is counted once both are answered."""
        if self.shadow is None or not self.copies_next():
            return
        try:
            shadow = self.resolve(self.shadow, lookup)
            if shadow is answering:
                return
            inputs = checked_inputs(shadow, request.inputs, max_elements)
            copy = shadow.batcher.submit(inputs, request.parameters)
        except ModelportError:
            self.count(answering.version, "failed")
            return
        self.compare_when_done(primary, copy, answering.version)

    def copies_next(self) -> bool:
        """Whether the next request gets a shadow copy (``shadow.share`` of them do)."""
        if self.spec.shadow is None:
            return False
        self._credit += self.spec.shadow.share
        if self._credit < 100.0:
            return False
        self._credit -= 100.0
        return True

    def count(self, version: int, outcome: str) -> None:
        assert self.shadow is not None
        key = Comparison(version, self.shadow.key, outcome)
        self.compared[key] = self.compared.get(key, 0) + 1

    def compare_when_done(
        self,
        primary: asyncio.Future[BatchResult],
        copy: asyncio.Future[BatchResult],
        version: int,
    ) -> None:
        """Count how the copy's answer compares with the primary's, once both are in
        (nothing, if the primary failed: there is no answer to compare with)."""
        settled = False

        def settle(_: object) -> None:
            nonlocal settled
            if settled or not (primary.done() and copy.done()):
                return
            settled = True
            copy_error = copy.cancelled() or copy.exception() is not None
            if primary.cancelled() or primary.exception() is not None:
                return
            if copy_error:
                self.count(version, "failed")
                return
            tolerance = self.spec.shadow.tolerance if self.spec.shadow else 0.0
            same = outputs_agree(primary.result().outputs, copy.result().outputs, tolerance)
            self.count(version, "agree" if same else "disagree")

        primary.add_done_callback(settle)
        copy.add_done_callback(settle)


def outputs_agree(
    returned: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], tolerance: float
) -> bool:
    """Whether every output returned has its like in the shadow's: same shape, values
    within ``tolerance`` (equal, for strings)."""
    for name, mine in returned.items():
        theirs = shadow.get(name)
        if theirs is None or theirs.shape != mine.shape:
            return False
        if mine.dtype == np.object_ or theirs.dtype == np.object_:
            if not np.array_equal(mine, theirs):
                return False
        elif not np.allclose(mine, theirs, rtol=0.0, atol=tolerance, equal_nan=True):
            return False
    return True
