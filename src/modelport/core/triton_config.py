"""A model's configuration in Triton's format, built once for every transport.

Triton's clients ask for a model's configuration (``ModelConfig`` in model_config.proto)
over HTTP (``GET /v2/models/{m}/config``) and over gRPC (``ModelConfig``). The
configuration is read off the model's spec (its model.yaml, or the config.pbtxt it was
read from) and its resolved signature, here, into one :class:`TritonConfig`;
:func:`triton_json` encodes it as Triton's JSON (which ``api/http/v2.py`` answers) and
``api/grpc/convert.py`` as the protobuf message, so the two cannot drift apart. A
python model given Triton's ``args["model_config"]`` gets :func:`model_config_json`. The
platform names Triton's clients switch on are here too (:func:`platform_of`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelport.core.runtime import Signature
from modelport.spec import EnsembleStep, ModelSpec, TensorSpec, VersionPolicy, WarmupSpec
from modelport.tensors import DATATYPES

# Triton's platform names, so clients that switch on them keep working.
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "python": "python",
    "ensemble": "ensemble",
}
# Triton's backend names, reported for a model whose spec names a Triton platform (one
# read from a config.pbtxt); other models report their modelport runtime.
BACKENDS = {
    "onnx": "onnxruntime",
    "torch": "pytorch",
    "tensorflow": "tensorflow",
    "python": "python",
    "ensemble": "",
}
# Where Triton's model_warmup reads input_data_file from, in the model's folder.
WARMUP_FOLDER = "warmup/"


def platform_of(spec: ModelSpec) -> str:
    """Triton's platform name of a model: the one its spec names (a config.pbtxt's),
    else its runtime's; a model served through other workers keeps the platform its
    workers report (``parameters.platform``)."""
    return str(
        spec.platform
        or spec.parameters.get("platform")
        or PLATFORMS.get(spec.runtime, spec.runtime)
    )


@dataclass(frozen=True, slots=True)
class ConfigTensor:
    """An input or output as Triton describes it (``ModelInput``, ``ModelOutput``)."""

    name: str
    data_type: str  # the name of Triton's DataType value: TYPE_FP32, TYPE_STRING (BYTES)...
    dims: tuple[int, ...]  # without the batch dimension, as the signature declares them
    reshape: tuple[int, ...] | None = None  # the model's own shape, where it differs
    optional: bool = False  # inputs only
    label_filename: str = ""  # outputs only


class InstanceKind(StrEnum):
    """Where a model's instances run (the names of ``ModelInstanceGroup.Kind``)."""

    CPU = "KIND_CPU"
    GPU = "KIND_GPU"
    AUTO = "KIND_AUTO"


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    count: int
    kind: InstanceKind
    gpus: tuple[int, ...]  # the GPU ids model.yaml pins, if any


class VersionChoice(StrEnum):
    """Which of ``ModelVersionPolicy``'s choices a model makes."""

    LATEST = "latest"
    ALL = "all"
    SPECIFIC = "specific"


@dataclass(frozen=True, slots=True)
class ServedVersions:
    """The version folders a model serves (Triton's ``version_policy``)."""

    choice: VersionChoice
    num_versions: int = 0  # LATEST: how many of the newest
    versions: tuple[int, ...] = ()  # SPECIFIC: which ones


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    preferred_batch_size: tuple[int, ...]
    max_queue_delay_microseconds: int
    max_queue_size: int = 0  # default_queue_policy's; 0 where the spec leaves it unset


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """One input of a warm-up sample (``ModelWarmup.Input``): its type and dims, and
    which of zero_data, random_data or input_data_file (``file``) fills it."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    source: str  # "zero_data", "random_data" or "input_data_file"
    file: str = ""  # input_data_file: in the model's warmup/ folder


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One ``model_warmup`` entry."""

    batch_size: int
    count: int
    inputs: tuple[WarmupInput, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TritonConfig:
    """One model version's configuration in Triton's terms (see the module docstring)."""

    name: str
    platform: str
    backend: str  # the modelport runtime, or Triton's backend where the spec names a platform
    max_batch_size: int
    inputs: tuple[ConfigTensor, ...]
    outputs: tuple[ConfigTensor, ...]
    instance_group: InstanceGroup
    version_policy: ServedVersions
    dynamic_batching: DynamicBatching | None  # None: the model does not batch
    parameters: Mapping[str, str]  # model.yaml's parameters, as text
    spec: ModelSpec  # the model.yaml it was read from, redacted (the HTTP answer carries it)
    default_model_filename: str = ""
    model_warmup: tuple[WarmupSample, ...] = ()
    ensemble_steps: tuple[EnsembleStep, ...] = ()  # an ensemble's ensemble_scheduling


def triton_type(datatype: str) -> str:
    """The name of Triton's DataType value for a v2 datatype."""
    return "TYPE_STRING" if datatype == "BYTES" else "TYPE_" + datatype


def triton_config(spec: ModelSpec, signature: Signature) -> TritonConfig:
    """The configuration of a model served as ``spec`` says, with ``signature``."""

    def tensors(specs: tuple[TensorSpec, ...]) -> tuple[ConfigTensor, ...]:
        return tuple(
            ConfigTensor(
                t.name,
                triton_type(t.datatype),
                t.shape,
                reshape=t.reshape,
                optional=t.optional,
                label_filename=t.labels if isinstance(t.labels, str) else "",
            )
            for t in specs
        )

    instances = spec.instances
    kind = {"gpu": InstanceKind.GPU, "auto": InstanceKind.AUTO}.get(
        instances.device, InstanceKind.CPU
    )
    batching = spec.batching
    # Triton's max_queue_size 0 is "no limit"; an unset one is left out, not shown as 0.
    queue = batching.max_queue_size if "max_queue_size" in batching.model_fields_set else 0
    return TritonConfig(
        name=spec.name,
        platform=platform_of(spec),
        backend=BACKENDS.get(spec.runtime, spec.runtime) if spec.platform else spec.runtime,
        max_batch_size=spec.max_batch_size,
        inputs=tensors(signature.inputs),
        outputs=tensors(signature.outputs),
        instance_group=InstanceGroup(instances.count, kind, tuple(instances.gpus)),
        version_policy=_served_versions(spec.version_policy),
        dynamic_batching=DynamicBatching(
            batching.preferred_batch_sizes, batching.max_queue_delay_us, queue
        )
        # An ensemble is scheduled by its steps (Triton's oneof: one or the other).
        if spec.batches and spec.ensemble is None
        else None,
        parameters={key: _as_text(value) for key, value in spec.parameters.items()},
        # What callers see of a remote model: no password, no bearer token.
        spec=spec.model_copy(update={"remote": spec.remote.redacted()}) if spec.remote else spec,
        default_model_filename=spec.model_file,
        model_warmup=tuple(_warmup(sample, signature) for sample in spec.warmup),
        ensemble_steps=spec.ensemble.step if spec.ensemble is not None else (),
    )


def model_config_json(spec: ModelSpec) -> str:
    """A model's configuration as the JSON text Triton gives a python model in
    ``args["model_config"]``, from its spec (whose inputs and outputs are declared)."""
    return json.dumps(triton_json(triton_config(spec, Signature(spec.inputs, spec.outputs))))


def triton_json(config: TritonConfig) -> dict[str, Any]:
    """The configuration as Triton's HTTP API answers it (``GET /v2/models/{m}/config``):
    the fields Triton's clients read; optional ones only where they are set."""

    def tensor(t: ConfigTensor) -> dict[str, Any]:
        out: dict[str, Any] = {"name": t.name, "dims": list(t.dims), "data_type": t.data_type}
        if t.reshape is not None:
            out["reshape"] = {"shape": list(t.reshape)}
        if t.optional:
            out["optional"] = True
        if t.label_filename:
            out["label_filename"] = t.label_filename
        return out

    batching = config.dynamic_batching
    doc: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [tensor(t) for t in config.inputs],
        "output": [tensor(t) for t in config.outputs],
        "instance_group": [
            {"count": config.instance_group.count, "kind": config.instance_group.kind.value}
        ],
        # Python models ask it (pb_utils.using_decoupled_model_transaction_policy).
        "model_transaction_policy": {"decoupled": False},
    }
    if batching is not None:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_size),
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        }
        if batching.max_queue_size:
            doc["dynamic_batching"]["default_queue_policy"] = {
                "max_queue_size": batching.max_queue_size
            }
    policy = config.version_policy
    if policy.choice is VersionChoice.ALL:
        doc["version_policy"] = {"all": {}}
    elif policy.choice is VersionChoice.SPECIFIC:
        doc["version_policy"] = {"specific": {"versions": list(policy.versions)}}
    else:
        doc["version_policy"] = {"latest": {"num_versions": policy.num_versions}}
    if config.default_model_filename:
        doc["default_model_filename"] = config.default_model_filename
    if config.parameters:
        doc["parameters"] = {k: {"string_value": v} for k, v in config.parameters.items()}
    if config.model_warmup:
        doc["model_warmup"] = [_warmup_json(sample) for sample in config.model_warmup]
    if config.ensemble_steps:
        doc["ensemble_scheduling"] = {
            "step": [
                {
                    "model_name": s.model_name,
                    "model_version": s.model_version,
                    "input_map": dict(s.input_map),
                    "output_map": dict(s.output_map),
                }
                for s in config.ensemble_steps
            ]
        }
    return doc


def _warmup_json(sample: WarmupSample) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for item in sample.inputs:
        entry: dict[str, Any] = {"data_type": item.data_type, "dims": list(item.dims)}
        entry[item.source] = item.file if item.source == "input_data_file" else True
        inputs[item.name] = entry
    return {"batch_size": sample.batch_size, "count": sample.count, "inputs": inputs}


def _warmup(sample: WarmupSpec, signature: Signature) -> WarmupSample:
    """A warm-up entry in Triton's terms; an input filled from a literal value or a file
    outside warmup/ (which Triton cannot express) is shown as zero_data."""
    inputs = []
    for tensor in signature.inputs:
        how = sample.inputs.get(tensor.name, "zeros")
        dims = sample.shapes.get(tensor.name) or tuple(1 if d == -1 else d for d in tensor.shape)
        file = how.get("file", "") if isinstance(how, Mapping) else ""
        if isinstance(file, str) and file.startswith(WARMUP_FOLDER):
            source, file = "input_data_file", file.removeprefix(WARMUP_FOLDER)
        else:
            source, file = ("random_data" if how == "random" else "zero_data"), ""
        data_type = triton_type(tensor.datatype) if tensor.datatype in DATATYPES else ""
        inputs.append(WarmupInput(tensor.name, data_type, tuple(dims), source, file))
    return WarmupSample(sample.batch_size, sample.count, tuple(inputs))


def _served_versions(policy: VersionPolicy) -> ServedVersions:
    if policy.all:
        return ServedVersions(VersionChoice.ALL)
    if policy.specific is not None:
        return ServedVersions(VersionChoice.SPECIFIC, versions=policy.specific)
    return ServedVersions(VersionChoice.LATEST, num_versions=policy.latest or 1)


def _as_text(value: object) -> str:
    # Triton's parameters are strings; a structured value travels as its JSON.
    return value if isinstance(value, str) else json.dumps(value, default=str)
