"""The schema of ``model.yaml``: what a model declares about itself.

The smallest useful file is two lines; everything else has a default or is read
from the model file itself (an ONNX model's signature)::

    runtime: onnx
    max_batch_size: 64

A file that cannot be used raises :class:`~modelport.errors.SpecError` whose message
names the file, the field and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelport.errors import SpecError
from modelport.tensors import DATATYPES

SPEC_FILE = "model.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


CODECS = ("image", "detections", "classification")


class ImageSpec(_Strict):
    """How the ``image`` codec turns an uploaded PNG or JPEG into this input (``codec:
    image``). On a BYTES input the file is passed as it is; on a numeric one it is
    decoded, resized to ``height`` x ``width`` (default: the fixed dimensions of
    ``shape``), put in ``channels`` order and ``layout``, then each value is
    ``(pixel * scale - mean) / std``::

        inputs:
          - name: images
            datatype: FP32
            shape: [3, 224, 224]
            codec: image
            image: {channels: RGB, layout: CHW, scale: 0.00392157,
                    mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
    """

    height: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=1)
    channels: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["HWC", "CHW"] = "HWC"
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ImageSpec:
        if (self.height is None) != (self.width is None):
            raise ValueError("give both 'height' and 'width', or neither")
        count = 1 if self.channels == "GRAY" else 3
        for field_name in ("mean", "std"):
            values = getattr(self, field_name)
            if len(values) not in (0, 1, count):
                raise ValueError(
                    f"'{field_name}' has {len(values)} values; give 1, or one per channel "
                    f"({count} for {self.channels})"
                )
        if any(v == 0 for v in self.std):
            raise ValueError("'std' values divide the pixels, so none may be 0")
        return self

    @property
    def channel_count(self) -> int:
        return 1 if self.channels == "GRAY" else 3


class DetectionsSpec(_Strict):
    """How the ``detections`` codec reads this output: rows of ``x1, y1, x2, y2, score,
    class`` (more columns are ignored; a row whose class is negative is padding).
    ``coordinates`` says what the numbers are relative to: ``image`` (the original
    picture's pixels), ``input`` (the pixels of the resized model input, mapped back)
    or ``normalized`` (0..1 of the picture). Rows under ``score_threshold`` are dropped
    unless a request asks for another threshold."""

    coordinates: Literal["image", "input", "normalized"] = "image"
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)


class ClassificationSpec(_Strict):
    """How the ``classification`` codec reads this output: one score per label; the
    answer is the ``top_k`` labels with the highest scores."""

    top_k: int = Field(default=5, ge=1)


class TensorSpec(_Strict):
    """One named input or output. ``shape`` excludes the batch dimension; -1 is variable."""

    name: str = Field(min_length=1)
    datatype: str
    shape: tuple[int, ...] = ()
    codec: str | None = None
    description: str = ""
    image: ImageSpec | None = None
    detections: DetectionsSpec | None = None
    classification: ClassificationSpec | None = None

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        upper = value.upper()
        if upper not in DATATYPES:
            raise ValueError(f"expected one of {', '.join(DATATYPES)}, got {value!r}")
        return upper

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError("dimensions are positive integers, or -1 for a variable one")
        return value

    @model_validator(mode="after")
    def _codec_fits(self) -> TensorSpec:
        if self.codec is not None and self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; expected one of {', '.join(CODECS)}")
        for block in ("image", "detections", "classification"):
            if getattr(self, block) is not None and self.codec != block:
                raise ValueError(f"an '{block}:' block needs 'codec: {block}'")
        numeric = self.datatype not in ("BYTES", "BOOL")
        if self.codec == "image" and self.datatype != "BYTES":
            self._image_shape_fits()
        elif self.codec == "detections" and (
            not numeric or len(self.shape) != 2 or 0 < self.shape[1] < 6
        ):
            raise ValueError(
                "codec 'detections' needs a numeric tensor of shape [-1, 6] (or more "
                f"columns): one row of x1, y1, x2, y2, score, class a box; got {self.datatype} "
                f"{list(self.shape)}"
            )
        elif self.codec == "classification" and (not numeric or len(self.shape) != 1):
            raise ValueError(
                "codec 'classification' needs a numeric tensor of shape [classes] (one "
                f"score per label); got {self.datatype} {list(self.shape)}"
            )
        return self

    def _image_shape_fits(self) -> None:
        options = self.image or ImageSpec()
        if len(self.shape) != 3:
            raise ValueError(
                f"codec 'image' on a {self.datatype} input needs a shape of 3 dimensions "
                f"({options.layout}, batch excluded), got {list(self.shape)}; or make it "
                "BYTES [1] to pass the file as it is"
            )
        if options.layout == "HWC":
            height, width, channels = self.shape
        else:
            channels, height, width = self.shape
        if channels not in (-1, options.channel_count):
            raise ValueError(
                f"shape {list(self.shape)} ({options.layout}) has {channels} channels, but "
                f"'image.channels' is {options.channels} ({options.channel_count})"
            )
        for dim, want, label in ((height, options.height, "height"),
                                 (width, options.width, "width")):  # fmt: skip
            if want is not None and dim not in (-1, want):
                raise ValueError(f"'image.{label}' {want} differs from the shape's {dim}")
        if options.height is None and -1 in (height, width):
            raise ValueError(
                f"shape {list(self.shape)} leaves the image size open; give "
                "'image: {height: H, width: W}' to say what to resize to"
            )


class BatchingSpec(_Strict):
    """How concurrent requests are merged. A lone request never waits for company."""

    max_queue_delay_us: int = Field(default=0, ge=0)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = Field(default=1024, ge=1)

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
    'zeros', or a literal nested list; ``batch_size`` rows each; repeated ``count`` times."""

    inputs: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(default=1, ge=1)
    count: int = Field(default=1, ge=1, le=1000)


REMOTE_SCHEMES = ("http", "https", "grpc")


class RemoteSpec(_Strict):
    """Where a ``runtime: remote`` model really runs: another server speaking KServe v2
    (Triton, another modelport) over HTTP or gRPC, or TF Serving's gRPC API. modelport
    keeps the routing, batching, metrics and friendly outputs; the remote only runs the
    batches::

        runtime: remote
        max_batch_size: 32
        remote:
          url: grpc://triton-3:8001
          protocol: v2           # or tfserving (TF Serving's gRPC API, grpc:// only)
          model: resnet50        # the remote's name for it; default: this model's name
          timeout: 5             # seconds per request
          headers: {authorization: Bearer abc}
    """

    url: str
    protocol: Literal["v2", "tfserving"] = "v2"
    model: str = ""
    version: int | None = Field(default=None, ge=1)
    signature: str = ""
    timeout: float = Field(default=10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _protocol_fits(self) -> RemoteSpec:
        if self.protocol == "tfserving" and not self.url.startswith("grpc://"):
            raise ValueError(
                "protocol: tfserving speaks TF Serving's gRPC API; give its grpc://host:8500"
            )
        if self.signature and self.protocol != "tfserving":
            raise ValueError(
                "'signature' names a TF Serving signature; it needs protocol: tfserving"
            )
        return self

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in REMOTE_SCHEMES or not parts.hostname:
            raise ValueError(
                f"expected http://host:port, https://host:port or grpc://host:port, got {value!r}"
            )
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{value!r} has an invalid port") from None
        if parts.scheme == "grpc" and (port is None or parts.path not in ("", "/")):
            raise ValueError(f"a gRPC url is grpc://host:port, with no path; got {value!r}")
        return value.rstrip("/")


_MEMORY = re.compile(r"^[1-9][0-9]*[bkmg]?$")
CONTAINER_RUNTIME = "container"


class ContainerSpec(_Strict):
    """How a ``runtime: container`` model runs: one container per task.

    The container reads its files from ``/input``, writes its results to ``/output``
    (and may write a number 0..1 to ``/output/.progress``), and finds the version
    folder read-only at ``/model``. Task parameters arrive as JSON in the environment
    variable ``MODELPORT_PARAMETERS``::

        runtime: container
        container:
          image: lab/segmenter:2.1
          command: [python, /app/run.py, --in, /input, --out, /output]
          gpus: 1            # a count, or a list of GPU ids; 0 runs on a CPU slot
          cpus: 4
          memory: 8g
          timeout: 3600      # seconds; the container is killed after it
    """

    image: str = Field(min_length=1)
    command: tuple[str, ...] | str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    gpus: int | tuple[int, ...] = Field(default=0)
    cpus: float | None = Field(default=None, gt=0)
    memory: str | None = None
    timeout: float = Field(default=3600.0, gt=0)
    network: bool = False
    user: str = Field(
        default="auto",
        description="'auto' runs as a non-root user; 'image' keeps the image's own; or 'uid:gid'",
    )
    pull: Literal["missing", "never", "always"] = "missing"

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> Any:
        if isinstance(value, int):
            value = str(value)
        if value is not None and not _MEMORY.match(str(value).lower()):
            raise ValueError("expected bytes with an optional unit b, k, m or g, e.g. '8g'")
        return None if value is None else str(value).lower()

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: int | tuple[int, ...]) -> int | tuple[int, ...]:
        if isinstance(value, int) and value < 0:
            raise ValueError("a GPU count is 0 or more")
        if isinstance(value, tuple) and any(g < 0 for g in value):
            raise ValueError("GPU ids are 0 or more")
        return value

    @property
    def gpu_count(self) -> int:
        return len(self.gpus) if isinstance(self.gpus, tuple) else self.gpus


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
    parameters: dict[str, Any] = Field(default_factory=dict)
    remote: RemoteSpec | None = Field(default=None, validate_default=True)
    container: ContainerSpec | None = Field(default=None, validate_default=True)

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

    @property
    def runs_as_tasks(self) -> bool:
        """Container models run as tasks (``/api/tasks``), never as online models."""
        return self.runtime == CONTAINER_RUNTIME

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
