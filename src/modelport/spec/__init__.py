"""The schema of ``model.yaml``: what a model declares about itself.

The smallest useful file is two lines; everything else has a default or is read
from the model file itself (an ONNX model's signature)::

    runtime: onnx
    max_batch_size: 64

A file that cannot be used raises :class:`~modelport.errors.SpecError` whose message
names the file, the field and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelport.errors import SpecError
from modelport.spec.backends import (
    CONTAINER_RUNTIME,
    REMOTE_SCHEMES,
    ContainerSpec,
    RemoteSpec,
)
from modelport.spec.base import Strict as _Strict
from modelport.spec.ensemble import ENSEMBLE_RUNTIME, EnsembleSpec, EnsembleStep
from modelport.spec.tensors import (
    CODECS,
    ClassificationSpec,
    DetectionsSpec,
    ImageSpec,
    TensorSpec,
)
from modelport.spec.traffic import ShadowSpec, checked_traffic

__all__ = [
    "CODECS",
    "CONTAINER_RUNTIME",
    "ENSEMBLE_RUNTIME",
    "REMOTE_SCHEMES",
    "SPEC_FILE",
    "BatchingSpec",
    "ClassificationSpec",
    "ContainerSpec",
    "DetectionsSpec",
    "EnsembleSpec",
    "EnsembleStep",
    "ImageSpec",
    "InstancesSpec",
    "ModelSpec",
    "RemoteSpec",
    "ShadowSpec",
    "TensorSpec",
    "ThreadsSpec",
    "VersionPolicy",
    "WarmupSpec",
    "load_spec",
    "parse_spec",
]

SPEC_FILE = "model.yaml"


class BatchingSpec(_Strict):
    """How concurrent requests are merged. A lone request never waits for company."""

    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = Field(default=1024, ge=1)
    # Priority levels (Triton's): 1 runs first; requests name theirs with the v2
    # parameter ``priority`` (0 or absent: ``default_priority_level``, else the lowest).
    # When the queue is full, the lowest levels are shed first.
    priority_levels: int = Field(default=0, ge=0, le=100)
    default_priority_level: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _default_level_exists(self) -> BatchingSpec:
        if self.default_priority_level > max(self.priority_levels, 1):
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is not one of the "
                f"{self.priority_levels} priority_levels"
            )
        return self

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError("preferred batch sizes are positive integers")
        return tuple(sorted(set(value)))


class InstancesSpec(_Strict):
    """How many copies of the model run in parallel, and where."""

    count: int = Field(default=1, ge=1, le=64)
    device: Literal["cpu", "gpu", "auto"] = "cpu"
    gpus: tuple[int, ...] = ()


class ThreadsSpec(_Strict):
    """Runtime threads per instance; 0 lets the runtime choose (TF Serving's intra/inter-op)."""

    intra_op: int = Field(default=1, ge=0)
    inter_op: int = Field(default=1, ge=0)


class VersionPolicy(_Strict):
    """Which version folders are served: the latest N (default 1), all, or specific ones."""

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen > 1:
            raise ValueError("give one of 'latest', 'all' or 'specific'")
        return self

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


class WarmupSpec(_Strict):
    """Requests run before the model reports ready. ``inputs`` maps a name to 'random',
    'zeros', a literal nested list, or ``{file: path}`` (in the model's folder: ``.npy``, or
    raw bytes); ``batch_size`` rows each; repeated ``count`` times. ``shapes`` gives an
    input's sample shape (batch excluded) where its declared one has -1 dimensions
    (Triton's ``model_warmup`` ``dims``)."""

    inputs: dict[str, Any] = Field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1, le=1000)


class ModelSpec(_Strict):
    """Everything ``model.yaml`` declares. ``name`` comes from the folder."""

    name: str
    runtime: str
    description: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = Field(default=0, ge=0)
    batching: BatchingSpec = BatchingSpec()
    instances: InstancesSpec = InstancesSpec()
    threads: ThreadsSpec = ThreadsSpec()
    version_policy: VersionPolicy = VersionPolicy()
    warmup: tuple[WarmupSpec, ...] = ()
    labels: tuple[str, ...] | str = ()
    version_labels: dict[str, int] = Field(default_factory=dict)
    # Other names the model answers to wherever a model is named (e.g. the Redis queue
    # names the detector server's clients send as model_type).
    aliases: tuple[str, ...] = ()
    parameters: dict[str, Any] = Field(default_factory=dict)
    remote: RemoteSpec | None = Field(default=None, validate_default=True)
    container: ContainerSpec | None = Field(default=None, validate_default=True)
    ensemble: EnsembleSpec | None = Field(default=None, validate_default=True)
    # The model's file (or folder) in each version folder when it is not the runtime's
    # usual name (Triton's default_model_filename).
    model_file: str = ""
    # Triton's platform name to report (a config.pbtxt's platform or backend); "" for
    # the runtime's own.
    platform: str = ""
    # How requests that name no version are shared out (spec/traffic.py).
    traffic: dict[str, int] = Field(default_factory=dict)
    shadow: ShadowSpec | None = None

    @field_validator("remote")
    @classmethod
    def _remote_matches_runtime(cls, value: RemoteSpec | None, info: ValidationInfo) -> Any:
        runtime = info.data.get("runtime")
        if runtime == "remote" and value is None:
            raise ValueError("runtime: remote needs a 'remote' section with at least a 'url'")
        if runtime != "remote" and value is not None:
            raise ValueError(f"only a runtime: remote model has one; this model's is {runtime!r}")
        return value

    @field_validator("container")
    @classmethod
    def _container_matches_runtime(cls, value: ContainerSpec | None, info: ValidationInfo) -> Any:
        runtime = info.data.get("runtime")
        if runtime == CONTAINER_RUNTIME and value is None:
            raise ValueError("runtime: container needs a 'container' section with its 'image'")
        if runtime != CONTAINER_RUNTIME and value is not None:
            raise ValueError(
                f"only a runtime: container model has one; this model's is {runtime!r}"
            )
        return value

    @field_validator("model_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"a file or folder name inside the version folder, got {value!r}")
        return value

    @field_validator("ensemble")
    @classmethod
    def _ensemble_fits(cls, value: EnsembleSpec | None, info: ValidationInfo) -> Any:
        runtime = info.data.get("runtime")
        if runtime == ENSEMBLE_RUNTIME and value is None:
            raise ValueError("runtime: ensemble needs an 'ensemble' section with its 'step' list")
        if runtime != ENSEMBLE_RUNTIME and value is not None:
            raise ValueError(f"only a runtime: ensemble model has one; this model's is {runtime!r}")
        if value is not None:
            inputs, outputs = info.data.get("inputs") or (), info.data.get("outputs") or ()
            if not inputs or not outputs:
                raise ValueError("an ensemble declares its 'inputs' and 'outputs'")
            value.ordered([t.name for t in inputs], [t.name for t in outputs])
        return value

    @property
    def runs_as_tasks(self) -> bool:
        """Container models run as tasks (``/api/tasks``), never as online models."""
        return self.runtime == CONTAINER_RUNTIME

    @field_validator("traffic", mode="before")
    @classmethod
    def _traffic(cls, value: Any) -> Any:
        return checked_traffic(value)

    @field_validator("version_labels")
    @classmethod
    def _label_names(cls, value: dict[str, int]) -> dict[str, int]:
        # A label that is all digits could not be told apart from a version number.
        bad = [k for k in value if not k or k.isdigit() or "/" in k or ":" in k]
        if bad:
            raise ValueError(f"labels {bad} must be names (not numbers, no '/' or ':')")
        if any(v < 1 for v in value.values()):
            raise ValueError("labels map to version numbers, which are positive integers")
        return value

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # An alias stands where a model name does: in URL paths, so no '/' either.
        bad = [a for a in value if not a.strip() or "/" in a or a != a.strip()]
        if bad:
            raise ValueError(f"aliases {bad} must be non-empty names without '/' or spaces")
        return value

    @model_validator(mode="after")
    def _batching_fits(self) -> ModelSpec:
        too_big = [s for s in self.batching.preferred_batch_sizes if s > self.max_batch_size]
        if too_big and self.max_batch_size > 0:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )
        return self

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field; check its spelling against the model.yaml reference"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"field '{where}': {message}"


def parse_spec(name: str, text: str, source: str) -> ModelSpec:
    """Parse model.yaml text; ``source`` names the file in error messages."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    if "name" in data and data["name"] != name:
        raise SpecError(
            f"{source}: field 'name': {data['name']!r} differs from its folder {name!r}; "
            "remove the field or rename the folder"
        )
    data = {**data, "name": name}
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(_describe(e) for e in exc.errors())  # type: ignore[arg-type]
        raise SpecError(f"{source}: {details}") from None


def load_spec(model_dir: Path) -> ModelSpec:
    """Read ``<model_dir>/model.yaml``; the model's name is the folder's name."""
    path = model_dir / SPEC_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: missing; every model folder needs a {SPEC_FILE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read: {exc}") from None
    return parse_spec(model_dir.name, text, str(path))
