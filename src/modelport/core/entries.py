"""The registry's records: a model's state and why it does not serve, its loaded
versions, and the repository index's rows. Adapters read them through
:class:`~modelport.core.service.InferenceService`; the registry alone writes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from modelport.core.batcher import Batcher
from modelport.core.instances import Instance
from modelport.core.runtime import Signature
from modelport.core.stats import ModelStats
from modelport.spec import ModelSpec, TensorSpec


class ModelState(StrEnum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


TASK_ONLY = (ModelState.UNAVAILABLE, "a container model: it runs as tasks (POST /api/tasks)")


@dataclass(slots=True, eq=False, kw_only=True)
class LoadedVersion:
    """One servable version: its resolved signature, batcher, instances and counters."""

    name: str
    version: int
    spec: ModelSpec
    signature: Signature
    labels: tuple[str, ...]
    batcher: Batcher  # an OnDemandBatcher stands in while evicted
    instances: list[Instance]
    stats: ModelStats
    devices: tuple[str, ...]
    # Each output's own class labels (an output's ``labels``, Triton's label_filename).
    output_labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inputs_by_name: dict[str, TensorSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs_by_name = {t.name: t for t in self.signature.inputs}


@dataclass(slots=True, eq=False, kw_only=True)
class ModelEntry:
    """The registry's record of one model: its state, the reason it does not serve,
    and its versions (serving, or standing in while evicted)."""

    name: str
    state: ModelState
    reason: str = ""
    spec: ModelSpec | None = None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    # Memory limits: evicted versions' stand-ins, which load the model again on demand;
    # the last request's tick, the size on disk, requests waiting for it to load.
    standby: dict[int, LoadedVersion] = field(default_factory=dict)
    last_used: int = 0
    size: int = 0
    waiters: int = 0
    unloaded: bool = False  # through the API, so a repository poll leaves it unloaded

    @property
    def latest(self) -> LoadedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexRow:
    """One row of the repository index: a serving version, or a model serving none
    (``version`` empty) with the reason."""

    name: str
    version: str
    state: str
    reason: str
