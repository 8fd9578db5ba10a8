"""A Triton repository's config.pbtxt read into the spec it stands for, and the errors
that name the file, the line and the field (core/config_pbtxt.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.core.config_pbtxt import config_spec
from modelport.core.repository import ModelRepository
from modelport.core.runtime import Signature
from modelport.core.triton_config import model_config_json, triton_config, triton_json
from modelport.errors import SpecError
from modelport.spec import ModelSpec
from support.builders import write_model
from support.triton_repos import ADD_SUB_CONFIG, ENSEMBLE_CONFIG, write_triton_model

pytestmark = pytest.mark.timeout(10)

WHERE = Path("/models/m/config.pbtxt")

FULL = """\
backend: "onnxruntime"
default_model_filename: "net.onnx"
max_batch_size: 16
version_policy: { specific: { versions: [ 1, 3 ] } }
input [
  {
    name: "image"
    data_type: TYPE_UINT8
    format: FORMAT_NHWC
    dims: [ 1, 4 ]
    reshape: { shape: [ 4 ] }
  },
  { name: "mask", data_type: TYPE_BOOL, dims: [ -1 ], optional: true }
]
output [
  { name: "probs", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "labels.txt" },
  { name: "text", data_type: TYPE_STRING, dims: [ 1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 250
  default_queue_policy { max_queue_size: 100 }
}
instance_group [ { count: 2, kind: KIND_GPU, gpus: [ 0, 1 ] } ]
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs { key: "image" value: { data_type: TYPE_UINT8, dims: [ 1, 4 ], zero_data: true } }
    inputs { key: "mask" value: { data_type: TYPE_BOOL, dims: [ 3 ], random_data: true } }
  },
  {
    name: "from a file"
    count: 3
    inputs { key: "image" value: { data_type: TYPE_UINT8, dims: [ 1, 4 ], input_data_file: "raw" } }
  }
]
parameters { key: "note" value: { string_value: "as text" } }
"""


def spec_of(text: str, name: str = "m") -> ModelSpec:
    return config_spec(name, text, WHERE)


def reason_of(text: str, name: str = "m") -> str:
    with pytest.raises(SpecError) as caught:
        spec_of(text, name)
    return caught.value.message


def test_every_field_lands_in_the_spec() -> None:
    spec = spec_of(FULL)
    assert (spec.runtime, spec.platform, spec.model_file) == (
        "onnx",
        "onnxruntime_onnx",
        "net.onnx",
    )
    assert spec.max_batch_size == 16
    assert spec.version_policy.specific == (1, 3)
    image, mask = spec.inputs
    assert (image.datatype, image.shape, image.reshape, image.optional) == (
        "UINT8",
        (1, 4),
        (4,),
        False,
    )
    assert (mask.datatype, mask.shape, mask.optional) == ("BOOL", (-1,), True)
    probs, text = spec.outputs
    assert (probs.labels, text.datatype) == ("labels.txt", "BYTES")
    batching = spec.batching
    assert batching.preferred_batch_sizes == (8, 16)
    assert (batching.max_queue_delay_us, batching.max_queue_size) == (250, 100)
    # Triton's count is per GPU listed: two on each of two GPUs.
    assert (spec.instances.count, spec.instances.device, spec.instances.gpus) == (4, "gpu", (0, 1))
    zeros, from_file = spec.warmup
    assert zeros.inputs == {"image": "zeros", "mask": "random"}
    assert zeros.shapes == {"image": (1, 4), "mask": (3,)}
    assert (zeros.batch_size, zeros.count) == (2, 1)
    assert from_file.inputs == {"image": {"file": "warmup/raw"}}
    assert from_file.count == 3
    assert spec.parameters == {"note": "as text"}


def test_the_config_answers_back_what_the_file_said() -> None:
    spec = spec_of(FULL)
    config = triton_json(triton_config(spec, Signature(spec.inputs, spec.outputs)))
    assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
    assert config["default_model_filename"] == "net.onnx"
    assert config["input"][0] == {
        "name": "image",
        "dims": [1, 4],
        "data_type": "TYPE_UINT8",
        "reshape": {"shape": [4]},
    }
    assert config["input"][1]["optional"] is True
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert config["output"][1]["data_type"] == "TYPE_STRING"
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [8, 16],
        "max_queue_delay_microseconds": 250,
        "default_queue_policy": {"max_queue_size": 100},
    }
    assert config["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert config["instance_group"] == [{"count": 4, "kind": "KIND_GPU"}]
    assert config["model_warmup"][0]["inputs"]["image"] == {
        "data_type": "TYPE_UINT8",
        "dims": [1, 4],
        "zero_data": True,
    }
    assert config["model_warmup"][1]["inputs"]["image"]["input_data_file"] == "raw"
    assert config["parameters"] == {"note": {"string_value": "as text"}}


def test_platforms_map_to_runtimes_and_their_files() -> None:
    torch = spec_of('platform: "pytorch_libtorch"\n')
    assert (torch.runtime, torch.model_file) == ("torch", "")  # model.pt, the runtime's own
    tf = spec_of('backend: "tensorflow"\n')
    assert (tf.runtime, tf.platform, tf.model_file) == (
        "tensorflow",
        "tensorflow_savedmodel",
        "model.savedmodel",
    )
    python = spec_of('backend: "python"\n')
    assert (python.runtime, python.instances.device) == ("python", "cpu")
    # No instance_group: Triton's default of a GPU where there is one.
    assert spec_of('platform: "onnxruntime_onnx"\n').instances.device == "auto"


def test_a_python_model_gets_its_config_as_tritons_json() -> None:
    spec = spec_of(ADD_SUB_CONFIG.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    text = model_config_json(spec)
    assert '"backend": "python"' in text and '"name": "INPUT0"' in text


@pytest.mark.parametrize(
    ("platform", "named"),
    [
        ('platform: "tensorrt_plan"', "'tensorrt_plan' cannot run in modelport"),
        ('backend: "openvino"', "'openvino' cannot run in modelport"),
        ('platform: "tensorflow_graphdef"\nbackend: "tensorflow"', "tensorflow_savedmodel"),
        ('backend: "my_custom"', "unknown platform/backend 'my_custom'"),
    ],
)
def test_platforms_that_cannot_run_name_themselves_and_what_to_use(
    platform: str, named: str
) -> None:
    reason = reason_of(f"max_batch_size: 1\n{platform}\n")
    assert reason.startswith(f"{WHERE}:2: field '")
    assert named in reason
    if "tensorrt" in platform:
        assert "onnxruntime_onnx" in reason


def test_a_syntax_error_names_the_file_line_and_the_field() -> None:
    reason = reason_of(
        'platform: "onnxruntime_onnx"\ninput [\n  { name: "x" data_type: TYPE_FP32\n'
    )
    # The line where the text stopped making sense, and the line itself with its fields.
    assert reason.startswith(f"{WHERE}:3:26: not valid protobuf text")
    assert 'Expected "}", in `{ name: "x" data_type: TYPE_FP32`' in reason
    # A file that stops mid-way says where.
    reason = reason_of('platform: "onnxruntime_onnx"\ninput [\n  { name: "x" dims: [4\n')
    assert reason.startswith(f"{WHERE}:4:1: not valid protobuf text")
    assert reason.endswith('Expected ",", at the end of the file, after `{ name: "x" dims: [4`')


def test_a_misspelt_field_names_the_file_line_and_the_field() -> None:
    text = (
        'platform: "onnxruntime_onnx"\ninput [\n  { name: "x", data_type: TYPE_FP32, dimz: [4] }\n]'
    )
    reason = reason_of(text)
    assert reason.startswith(f"{WHERE}:3:")
    assert "field 'dimz'" in reason and "spelling" in reason


def test_a_wrong_value_names_the_file_line_and_the_field() -> None:
    reason = reason_of('platform: "onnxruntime_onnx"\nmax_batch_size: "eight"\n')
    assert reason.startswith(f"{WHERE}:2:") and "max_batch_size" in reason
    reason = reason_of(
        'platform: "onnxruntime_onnx"\ninput [ { name: "x", data_type: TYPE_BF16, dims: [1] } ]\n'
    )
    assert reason.startswith(f"{WHERE}:2: field 'input[0].data_type': TYPE_BF16 is not served")


def test_triton_features_modelport_lacks_are_refused_by_name() -> None:
    reason = reason_of('backend: "python"\nsequence_batching { }\n')
    assert reason.startswith(f"{WHERE}:2:") and "'sequence_batching'" in reason
    assert "not supported" in reason
    reason = reason_of('backend: "python"\nmodel_transaction_policy { decoupled: true }\n')
    assert "field 'model_transaction_policy'" in reason and "decoupled" in reason


def test_a_name_other_than_the_folder_is_refused() -> None:
    reason = reason_of('name: "other"\nbackend: "python"\n')
    assert reason.startswith(f"{WHERE}:1: field 'name': 'other' differs from its folder 'm'")


def test_an_ensemble_whose_data_has_no_source_names_the_step() -> None:
    broken = ENSEMBLE_CONFIG.replace(
        'value: "difference" }\n      output_map', 'value: "nowhere" }\n      output_map', 1
    )
    reason = reason_of(broken, "twice")
    assert "field 'ensemble_scheduling'" in reason
    assert "step 0 (model 'add_sub'): input_map reads 'nowhere'" in reason


def test_model_yaml_wins_over_config_pbtxt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_model(tmp_path, "both", "runtime: fake\n", {"1/README": ""})
    (folder / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    with caplog.at_level("INFO", logger="modelport.repository"):
        source = ModelRepository(tmp_path).source("both")
    assert source.spec.runtime == "fake" and source.spec_file == folder / "model.yaml"
    assert "has both model.yaml and config.pbtxt: serving from" in caplog.text
    (folder / "model.yaml").unlink()
    # Errors about the spec (a signature the model file lacks) name the file it came from.
    source = ModelRepository(tmp_path).source("both")
    assert (source.spec.runtime, source.spec_file) == ("onnx", folder / "config.pbtxt")


def test_an_ensemble_step_naming_a_missing_model_names_the_step(tmp_path: Path) -> None:
    write_triton_model(tmp_path, "twice", ENSEMBLE_CONFIG, {"1/.keep": ""})
    with pytest.raises(SpecError) as caught:
        ModelRepository(tmp_path).source("twice")
    assert caught.value.message.startswith(
        "model 'twice': ensemble step 0 names model 'add_sub', which is not in the repository"
    )
