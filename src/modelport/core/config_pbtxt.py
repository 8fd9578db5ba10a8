"""A Triton repository's ``config.pbtxt``, read into the :class:`ModelSpec` it stands for.

A model folder laid out for Triton (``<name>/config.pbtxt``, ``<name>/<version>/model.onnx``)
serves with no model.yaml. The file is protobuf text of Triton's ``ModelConfig``, parsed
strictly into modelport's ``model_config.proto``, then mapped field by field:

==============================  ====================================================
config.pbtxt                    model.yaml
==============================  ====================================================
platform / backend              runtime (onnxruntime_onnx: onnx, pytorch_libtorch:
                                torch, tensorflow_savedmodel: tensorflow, python,
                                ensemble); the platform is reported as written
default_model_filename          model_file (tensorflow: ``model.savedmodel``)
max_batch_size                  max_batch_size
input / output                  inputs / outputs (dims: shape; reshape, optional,
                                label_filename: labels)
dynamic_batching                batching (max_queue_size from default_queue_policy)
instance_group                  instances (KIND_CPU/GPU/AUTO; count is per listed GPU)
version_policy                  version_policy
model_warmup                    warmup (zero_data, random_data, input_data_file in
                                ``<model>/warmup/``; dims: shapes)
ensemble_scheduling             ensemble
parameters                      parameters (as text, as Triton passes them)
==============================  ====================================================

A file that cannot be used raises :class:`~modelport.errors.SpecError` naming the file,
the line and the field; a platform that cannot run here names itself and what to use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from pydantic import ValidationError

from modelport.errors import SpecError
from modelport.protos import model_config_pb2 as config_pb
from modelport.spec import ENSEMBLE_RUNTIME, ModelSpec

CONFIG_FILE = "config.pbtxt"

# Triton's platform or backend names that modelport runs, and the runtime that runs them.
RUNTIMES = {
    "onnxruntime_onnx": "onnx",
    "onnxruntime": "onnx",
    "pytorch_libtorch": "torch",
    "pytorch": "torch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow": "tensorflow",
    "python": "python",
    ENSEMBLE_RUNTIME: ENSEMBLE_RUNTIME,
}
# Triton's platform name for each runtime (reported whichever name the file used).
PLATFORM_OF = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "python": "python",
    ENSEMBLE_RUNTIME: ENSEMBLE_RUNTIME,
}
# The model file Triton looks for where default_model_filename does not say, when it
# differs from the runtime's own (a SavedModel sits in a folder of its own).
TRITON_MODEL_FILES = {"tensorflow": "model.savedmodel"}
_TENSORRT = (
    "a TensorRT engine only runs on the GPU and TensorRT version it was built for; serve "
    'the ONNX model it was built from (platform: "onnxruntime_onnx", model.onnx), which '
    "runs on ONNX Runtime's CUDA provider on a GPU"
)
# Platforms Triton runs that modelport cannot, and what to serve instead.
UNRUNNABLE = {
    "tensorrt_plan": _TENSORRT,
    "tensorrt": _TENSORRT,
    "openvino": 'export the model to ONNX (platform: "onnxruntime_onnx", model.onnx)',
    "tensorflow_graphdef": 'save it as a SavedModel (platform: "tensorflow_savedmodel", '
    "model.savedmodel/)",
    "caffe2_netdef": 'export the model to ONNX (platform: "onnxruntime_onnx")',
    "fil": "export the forest to ONNX (e.g. with skl2onnx or onnxmltools)",
    "dali": 'do the pre-processing in a python model (backend: "python")',
    "vllm": "serve it with vLLM itself, and reach it as a runtime: remote model",
    "tensorrtllm": "serve it with TensorRT-LLM, and reach it as a runtime: remote model",
}
# Triton fields modelport has no equivalent for: refused with this reason.
UNSUPPORTED_FIELDS = {
    "sequence_batching": "stateful sequence models are not supported",
    "batch_input": "ragged batches are not supported",
    "batch_output": "ragged batches are not supported",
    "model_operations": "custom operation libraries are not loaded",
    "model_repository_agents": "repository agents are not run",
    "model_metrics": "custom metric buckets are not supported",
    "rate_limiter": "instances are not rate limited",
    "secondary_devices": "secondary devices (NVDLA) are not used",
}
_DEVICES = {
    config_pb.ModelInstanceGroup.KIND_CPU: "cpu",
    config_pb.ModelInstanceGroup.KIND_GPU: "gpu",
    config_pb.ModelInstanceGroup.KIND_AUTO: "auto",
    config_pb.ModelInstanceGroup.KIND_MODEL: "auto",
}
# Where a config.pbtxt field lands in model.yaml, to name the file's field in errors.
_TRITON_FIELD = {
    "inputs": "input",
    "outputs": "output",
    "batching": "dynamic_batching",
    "instances": "instance_group",
    "warmup": "model_warmup",
    "ensemble": "ensemble_scheduling",
    "model_file": "default_model_filename",
}


def read_config_pbtxt(model_dir: Path) -> ModelSpec:
    """The spec of ``<model_dir>/config.pbtxt``; the model's name is the folder's."""
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read: {exc}") from None
    return config_spec(model_dir.name, text, path)


def config_spec(name: str, text: str, path: Path) -> ModelSpec:
    """The spec of config.pbtxt ``text``; ``path`` names the file in error messages."""
    config = _parse(text, path)
    fields = _Fields(text, path)
    if config.name and config.name != name:
        raise fields.error(
            "name", f"{config.name!r} differs from its folder {name!r}; remove it or rename one"
        )
    data = {"name": name, **_runtime(config, fields)}
    data.update(
        max_batch_size=config.max_batch_size,
        inputs=[_tensor(t, fields, f"input[{i}]") for i, t in enumerate(config.input)],
        outputs=[_tensor(t, fields, f"output[{i}]") for i, t in enumerate(config.output)],
        parameters={key: p.string_value for key, p in config.parameters.items()},
    )
    if config.max_batch_size < 0:
        raise fields.error("max_batch_size", "is 0 (no batching) or more")
    if config.HasField("dynamic_batching"):
        data["batching"] = _batching(config.dynamic_batching)
    if config.instance_group:
        data["instances"] = _instances(config, fields)
    elif data["runtime"] in ("onnx", "torch", "tensorflow"):
        data["instances"] = {"device": "auto"}  # Triton's default: a GPU where there is one
    if config.HasField("version_policy"):
        data["version_policy"] = _version_policy(config.version_policy)
    if config.model_warmup:
        data["warmup"] = [_warmup(w) for w in config.model_warmup]
    if config.HasField("ensemble_scheduling"):
        data["ensemble"] = _ensemble(config, fields)
        # An ensemble's instance waits while its steps run: several let requests overlap.
        inflight = config.ensemble_scheduling.max_inflight_requests
        data["instances"] = {"count": min(inflight or 8, 64)}
    if config.model_transaction_policy.decoupled:
        raise fields.error(
            "model_transaction_policy",
            "decoupled models are not supported: modelport answers each request once",
        )
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = [str(part) for part in first["loc"]]
        top = _TRITON_FIELD.get(where[0], where[0]) if where else "(top level)"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise fields.error(top, f"{message} ({'.'.join(where)} in model.yaml terms)") from None


def _parse(text: str, path: Path) -> config_pb.ModelConfig:
    config = config_pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        message = str(exc).split(" : ", 1)[-1].removeprefix("'': ").rstrip(".")
        unknown = re.search(r'has no field named "(\w+)"', message)
        if unknown:
            field = unknown[1]
            why = UNSUPPORTED_FIELDS.get(
                field, "not a field of Triton's model configuration there; check its spelling"
            )
            raise SpecError(f"{path}:{line}:{column}: field '{field}': {why}") from None
        lines = text.splitlines()
        if 0 < line <= len(lines):
            at = f"in `{lines[line - 1].strip()}`"
        else:
            last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            at = f"at the end of the file, after `{last}`"
        raise SpecError(
            f"{path}:{line}:{column}: not valid protobuf text (Triton's model configuration): "
            f"{message}, {at}"
        ) from None
    return config


class _Fields:
    """Finds the line a field is set on, for error messages that point at it."""

    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path

    def error(self, field: str, message: str) -> SpecError:
        base = re.sub(r"\[(\d+)\]", "", field.split(".")[-1])
        nth = int(match[1]) if (match := re.search(r"\[(\d+)\]", field)) else 0
        pattern = re.compile(rf"(?<![\w.]){re.escape(base)}\s*[:{{<\[]")
        seen = 0
        for number, line in enumerate(self.lines, start=1):
            if pattern.search(line.split("#", 1)[0]):
                if seen == nth:
                    return SpecError(f"{self.path}:{number}: field '{field}': {message}")
                seen += 1
        return SpecError(f"{self.path}: field '{field}': {message}")


def _runtime(config: config_pb.ModelConfig, fields: _Fields) -> dict[str, Any]:
    platform, backend = config.platform, config.backend
    for named, field in ((platform, "platform"), (backend, "backend")):
        if named in UNRUNNABLE:
            raise fields.error(field, f"{named!r} cannot run in modelport; {UNRUNNABLE[named]}")
    named, field = (platform, "platform") if platform else (backend, "backend")
    if not named:
        raise fields.error(
            "platform",
            'missing; give platform (e.g. "onnxruntime_onnx") or backend (e.g. "python")',
        )
    runtime = RUNTIMES.get(named)
    if runtime is None:
        raise fields.error(
            field, f"unknown platform/backend {named!r}; modelport runs {', '.join(RUNTIMES)}"
        )
    if platform and backend and RUNTIMES.get(backend) != runtime:
        raise fields.error("backend", f"{backend!r} does not run platform {platform!r}")
    out: dict[str, Any] = {"runtime": runtime, "platform": PLATFORM_OF[runtime]}
    model_file = config.default_model_filename or TRITON_MODEL_FILES.get(runtime, "")
    if model_file:
        out["model_file"] = model_file
    return out


_SERVED_TYPES = [
    name
    for name in config_pb.DataType.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if name not in ("TYPE_INVALID", "TYPE_BF16")
]


def _datatype(value: int, fields: _Fields, where: str) -> str:
    name = config_pb.DataType.Name(value)
    if name not in _SERVED_TYPES:
        raise fields.error(
            f"{where}.data_type", f"{name} is not served; use one of {', '.join(_SERVED_TYPES)}"
        )
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


def _tensor(
    tensor: config_pb.ModelInput | config_pb.ModelOutput, fields: _Fields, where: str
) -> dict[str, Any]:
    if tensor.is_shape_tensor:
        raise fields.error(f"{where}.is_shape_tensor", "shape tensors (TensorRT) are not supported")
    if isinstance(tensor, config_pb.ModelInput) and tensor.allow_ragged_batch:
        raise fields.error(f"{where}.allow_ragged_batch", "ragged batches are not supported")
    out: dict[str, Any] = {
        "name": tensor.name,
        "datatype": _datatype(tensor.data_type, fields, where),
        "shape": list(tensor.dims),
    }
    if tensor.HasField("reshape"):
        out["reshape"] = list(tensor.reshape.shape)
    if isinstance(tensor, config_pb.ModelInput) and tensor.optional:
        out["optional"] = True
    if isinstance(tensor, config_pb.ModelOutput) and tensor.label_filename:
        out["labels"] = tensor.label_filename
    return out


def _batching(batching: config_pb.ModelDynamicBatching) -> dict[str, Any]:
    out: dict[str, Any] = {
        "max_queue_delay_us": batching.max_queue_delay_microseconds,
        "preferred_batch_sizes": list(batching.preferred_batch_size),
    }
    if batching.default_queue_policy.max_queue_size:  # Triton's 0: no limit of its own
        out["max_queue_size"] = batching.default_queue_policy.max_queue_size
    return out


def _instances(config: config_pb.ModelConfig, fields: _Fields) -> dict[str, Any]:
    devices = {_DEVICES[group.kind] for group in config.instance_group}
    if len(devices) > 1:
        raise fields.error(
            "instance_group",
            f"groups of kinds {sorted(devices)}: modelport runs a model's instances on one "
            "kind of device; give one group (or groups of one kind)",
        )
    count, gpus = 0, []
    for group in config.instance_group:
        # Triton's count is per GPU listed; 0 is its default of one.
        count += max(group.count, 1) * max(len(group.gpus), 1)
        gpus += [g for g in group.gpus if g not in gpus]
    return {"count": count, "device": devices.pop(), "gpus": gpus}


def _version_policy(policy: config_pb.ModelVersionPolicy) -> dict[str, Any]:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": True}
    if choice == "specific":
        return {"specific": list(policy.specific.versions)}
    return {"latest": max(policy.latest.num_versions, 1)}


def _warmup(sample: config_pb.ModelWarmup) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    for name, given in sample.inputs.items():
        kind = given.WhichOneof("input_data_type")
        if kind == "input_data_file":
            inputs[name] = {"file": f"warmup/{given.input_data_file}"}
        else:
            inputs[name] = "random" if kind == "random_data" else "zeros"
        shapes[name] = list(given.dims)
    return {
        "inputs": inputs,
        "shapes": shapes,
        "batch_size": max(sample.batch_size, 1),
        "count": max(sample.count, 1),
    }


def _ensemble(config: config_pb.ModelConfig, fields: _Fields) -> dict[str, Any]:
    steps = []
    for index, step in enumerate(config.ensemble_scheduling.step):
        if step.model_namespace:
            raise fields.error(f"step[{index}].model_namespace", "namespaces are not supported")
        steps.append(
            {
                "model_name": step.model_name,
                "model_version": step.model_version,
                "input_map": dict(step.input_map),
                "output_map": dict(step.output_map),
            }
        )
    return {"step": steps}
