"""A model's configuration in Triton's format, built once for every transport.

Triton's clients ask for a model's configuration (``ModelConfig`` in model_config.proto)
over HTTP (``GET /v2/models/{m}/config``) and over gRPC (``ModelConfig``). modelport has
no config.pbtxt: the configuration is read off the model's model.yaml and its resolved
signature, here, into one :class:`TritonConfig`; ``api/http/v2.py`` encodes it as JSON and
``api/grpc/convert.py`` as the protobuf message, so the two cannot drift apart. The
platform names Triton's clients switch on are here too (:func:`platform_of`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelport.core.runtime import Signature
from modelport.spec import ModelSpec, TensorSpec, VersionPolicy

# Triton's platform names, so clients that switch on them keep working.
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "python": "python",
}


def platform_of(spec: ModelSpec) -> str:
    """Triton's platform name of a model; a model served through other workers keeps
    the platform its workers report (``parameters.platform``)."""
    return str(spec.parameters.get("platform") or PLATFORMS.get(spec.runtime, spec.runtime))


@dataclass(frozen=True, slots=True)
class ConfigTensor:
    """An input or output as Triton describes it (``ModelInput``, ``ModelOutput``)."""

    name: str
    data_type: str  # the name of Triton's DataType value: TYPE_FP32, TYPE_STRING (BYTES)...
    dims: tuple[int, ...]  # without the batch dimension, as the signature declares them


class InstanceKind(StrEnum):
    """Where a model's instances run (the names of ``ModelInstanceGroup.Kind``)."""

    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


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


@dataclass(frozen=True, slots=True, kw_only=True)
class TritonConfig:
    """One model version's configuration in Triton's terms (see the module docstring)."""

    name: str
    platform: str
    backend: str  # the modelport runtime
    max_batch_size: int
    inputs: tuple[ConfigTensor, ...]
    outputs: tuple[ConfigTensor, ...]
    instance_group: InstanceGroup
    version_policy: ServedVersions
    dynamic_batching: DynamicBatching | None  # None: the model does not batch
    parameters: Mapping[str, str]  # model.yaml's parameters, as text
    spec: ModelSpec  # the model.yaml it was read from, redacted (the HTTP answer carries it)


def triton_type(datatype: str) -> str:
    """The name of Triton's DataType value for a v2 datatype."""
    return "TYPE_STRING" if datatype == "BYTES" else "TYPE_" + datatype


def triton_config(spec: ModelSpec, signature: Signature) -> TritonConfig:
    """The configuration of a model served as ``spec`` says, with ``signature``."""

    def tensors(specs: tuple[TensorSpec, ...]) -> tuple[ConfigTensor, ...]:
        return tuple(ConfigTensor(t.name, triton_type(t.datatype), t.shape) for t in specs)

    instances = spec.instances
    kind = InstanceKind.GPU if instances.device == "gpu" else InstanceKind.CPU
    batching = spec.batching
    return TritonConfig(
        name=spec.name,
        platform=platform_of(spec),
        backend=spec.runtime,
        max_batch_size=spec.max_batch_size,
        inputs=tensors(signature.inputs),
        outputs=tensors(signature.outputs),
        instance_group=InstanceGroup(instances.count, kind, tuple(instances.gpus)),
        version_policy=_served_versions(spec.version_policy),
        dynamic_batching=DynamicBatching(
            batching.preferred_batch_sizes, batching.max_queue_delay_us
        )
        if spec.batches
        else None,
        parameters={key: _as_text(value) for key, value in spec.parameters.items()},
        # What callers see of a remote model: no password, no bearer token.
        spec=spec.model_copy(update={"remote": spec.remote.redacted()}) if spec.remote else spec,
    )


def _served_versions(policy: VersionPolicy) -> ServedVersions:
    if policy.all:
        return ServedVersions(VersionChoice.ALL)
    if policy.specific is not None:
        return ServedVersions(VersionChoice.SPECIFIC, versions=policy.specific)
    return ServedVersions(VersionChoice.LATEST, num_versions=policy.latest or 1)


def _as_text(value: object) -> str:
    # Triton's parameters are strings; a structured value travels as its JSON.
    return value if isinstance(value, str) else json.dumps(value, default=str)


def triton_json(config: TritonConfig) -> dict[str, Any]:
    """The configuration as Triton writes it in JSON (model_config.proto's field names,
    as protobuf's JSON printer spells them, numbers as numbers): what Triton hands a
    python-backend model as ``args["model_config"]``."""

    def tensors(items: tuple[ConfigTensor, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": t.data_type, "dims": list(t.dims)} for t in items]

    group = config.instance_group
    batching = config.dynamic_batching
    versions = config.version_policy
    policy: dict[str, Any] = {"latest": {"num_versions": versions.num_versions}}
    if versions.choice is VersionChoice.ALL:
        policy = {"all": {}}
    elif versions.choice is VersionChoice.SPECIFIC:
        policy = {"specific": {"versions": list(versions.versions)}}
    found: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "version_policy": policy,
        "max_batch_size": config.max_batch_size,
        "input": tensors(config.inputs),
        "output": tensors(config.outputs),
        "instance_group": [
            {
                "name": f"{config.name}_0",
                "kind": group.kind.value,
                "count": group.count,
                "gpus": list(group.gpus),
            }
        ],
        "parameters": {key: {"string_value": value} for key, value in config.parameters.items()},
        "model_transaction_policy": {"decoupled": False},
    }
    if batching is not None:
        found["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_size),
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        }
    return found
