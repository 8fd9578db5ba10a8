"""Triton's model configuration is read once off model.yaml and the signature, into one
value; HTTP and gRPC encode that value (tests/api/.../test_convert.py, test_v2_http.py)."""

from __future__ import annotations

import json

import pytest

from modelport.core.runtime import Signature
from modelport.core.triton_config import (
    ConfigTensor,
    DynamicBatching,
    InstanceKind,
    ServedVersions,
    VersionChoice,
    platform_of,
    triton_config,
    triton_json,
)
from modelport.spec import parse_spec

pytestmark = pytest.mark.timeout(10)

YAML = """\
runtime: onnx
max_batch_size: 8
batching: {preferred_batch_sizes: [4, 8], max_queue_delay_us: 500}
instances: {count: 2, device: gpu, gpus: [1]}
version_policy: {specific: [1, 3]}
inputs: [{name: text, datatype: BYTES, shape: [-1]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
parameters: {sizes: [1, 2], note: text}
"""


def test_the_config_of_a_batching_gpu_model() -> None:
    spec = parse_spec("m", YAML, "model.yaml")
    config = triton_config(spec, Signature(spec.inputs, spec.outputs))
    assert (config.name, config.platform, config.backend) == ("m", "onnxruntime_onnx", "onnx")
    assert config.inputs == (ConfigTensor("text", "TYPE_STRING", (-1,)),)
    assert config.outputs == (ConfigTensor("y", "TYPE_FP32", (2,)),)
    group = config.instance_group
    assert (group.count, group.kind, group.gpus) == (2, InstanceKind.GPU, (1,))
    assert config.version_policy == ServedVersions(VersionChoice.SPECIFIC, versions=(1, 3))
    assert config.dynamic_batching == DynamicBatching((4, 8), 500)
    # Triton's parameters are text: a structured value travels as its JSON.
    assert config.parameters == {"sizes": "[1, 2]", "note": "text"}


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", ServedVersions(VersionChoice.LATEST, num_versions=1)),
        ("version_policy: {latest: 2}\n", ServedVersions(VersionChoice.LATEST, num_versions=2)),
        ("version_policy: {all: true}\n", ServedVersions(VersionChoice.ALL)),
    ],
)
def test_version_policies(policy: str, served: ServedVersions) -> None:
    spec = parse_spec("m", "runtime: fake\n" + policy, "model.yaml")
    config = triton_config(spec, Signature((), ()))
    assert config.version_policy == served
    assert config.dynamic_batching is None  # max_batch_size 0: no batching
    assert config.instance_group.kind is InstanceKind.CPU


def test_a_model_served_elsewhere_keeps_the_platform_its_workers_report() -> None:
    spec = parse_spec("m", "runtime: cluster\nparameters: {platform: python}\n", "model.yaml")
    assert platform_of(spec) == "python"
    assert platform_of(parse_spec("m", "runtime: torch\n", "model.yaml")) == "pytorch_libtorch"


def test_triton_json_is_the_form_python_backend_models_read() -> None:
    spec = parse_spec("m", YAML, "model.yaml")
    found = triton_json(triton_config(spec, Signature(spec.inputs, spec.outputs)))
    assert json.loads(json.dumps(found)) == found  # plain JSON, as args["model_config"] is
    assert found["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert found["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]
    assert found["max_batch_size"] == 8
    assert found["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert found["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert found["dynamic_batching"] == {
        "preferred_batch_size": [4, 8],
        "max_queue_delay_microseconds": 500,
    }
    assert found["parameters"] == {
        "sizes": {"string_value": "[1, 2]"},
        "note": {"string_value": "text"},
    }
    plain = parse_spec("m", "runtime: fake\n", "model.yaml")
    unbatched = triton_json(triton_config(plain, Signature((), ())))
    assert "dynamic_batching" not in unbatched
    assert unbatched["version_policy"] == {"latest": {"num_versions": 1}}
