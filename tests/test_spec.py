"""model.yaml: the two-line minimum, every field of the full file, and the errors a
broken file gives (each names the file, the field and what was expected)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from modelport.errors import ErrorKind, SpecError
from modelport.spec import ModelSpec, load_spec, parse_spec
from modelport.tensors import DATATYPES

FULL = """\
runtime: onnx
description: every field at once
max_batch_size: 32
inputs:
{inputs}
outputs:
  - name: scores
    datatype: FP32
    shape: [-1, 10]
    codec: detections
    description: one row a box
batching:
  max_queue_delay_us: 500
  preferred_batch_sizes: [16, 4, 8, 4]
  max_queue_size: 99
instances:
  count: 3
  device: gpu
  gpus: [0, 1]
threads:
  intra_op: 4
  inter_op: 0
version_policy:
  latest: 2
warmup:
  - inputs: {{in_FP32: random, in_INT64: zeros}}
    batch_size: 2
    count: 5
labels: [cat, dog]
parameters:
  scale: 0.5
"""


def _full_yaml() -> str:
    inputs = "\n".join(f"  - {{name: in_{dt}, datatype: {dt}, shape: [-1, 3]}}" for dt in DATATYPES)
    return FULL.format(inputs=inputs)


def _error(text: str, source: str = "models/m/model.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec("m", textwrap.dedent(text), source)
    assert info.value.kind is ErrorKind.INVALID_SPEC
    message = info.value.message
    assert message.startswith(source), message
    return message


def test_minimal_file_defaults_everything_else() -> None:
    spec = parse_spec("digits", "runtime: onnx\nmax_batch_size: 64\n", "model.yaml")
    assert spec.name == "digits"
    assert spec.runtime == "onnx"
    assert spec.max_batch_size == 64 and spec.batches
    # The signature is left to the runtime, which reads it from the model file.
    assert spec.inputs == () and spec.outputs == ()
    assert spec.batching.max_queue_delay_us == 0
    assert spec.batching.preferred_batch_sizes == ()
    assert spec.instances.count == 1 and spec.instances.device == "cpu"
    assert (spec.threads.intra_op, spec.threads.inter_op) == (1, 1)
    assert spec.version_policy.select([1, 3, 2]) == [3]
    assert spec.warmup == () and spec.labels == ()


def test_full_file_reads_every_field() -> None:
    spec = parse_spec("m", _full_yaml(), "model.yaml")
    assert spec.description == "every field at once"
    assert [t.datatype for t in spec.inputs] == list(DATATYPES)
    assert all(t.shape == (-1, 3) for t in spec.inputs)
    (out,) = spec.outputs
    assert (out.name, out.datatype, out.shape, out.codec) == (
        "scores",
        "FP32",
        (-1, 10),
        "detections",
    )
    assert out.description == "one row a box"
    # Preferred sizes come back sorted and without duplicates.
    assert spec.batching.preferred_batch_sizes == (4, 8, 16)
    assert spec.batching.max_queue_delay_us == 500
    assert spec.batching.max_queue_size == 99
    assert (spec.instances.count, spec.instances.device, spec.instances.gpus) == (3, "gpu", (0, 1))
    assert (spec.threads.intra_op, spec.threads.inter_op) == (4, 0)
    assert spec.version_policy.latest == 2
    (warmup,) = spec.warmup
    assert warmup.inputs == {"in_FP32": "random", "in_INT64": "zeros"}
    assert (warmup.batch_size, warmup.count) == (2, 5)
    assert spec.labels == ("cat", "dog")
    assert spec.parameters == {"scale": 0.5}


def test_labels_may_name_a_file() -> None:
    spec = parse_spec("m", "runtime: onnx\nlabels: labels.txt\n", "model.yaml")
    assert spec.labels == "labels.txt"


def test_datatypes_are_case_insensitive() -> None:
    spec = parse_spec(
        "m", "runtime: fake\ninputs: [{name: x, datatype: fp16, shape: [2]}]\n", "model.yaml"
    )
    assert spec.inputs[0].datatype == "FP16"


@pytest.mark.parametrize(
    ("policy", "selected"),
    [
        ("{}", [5]),
        ("{latest: 2}", [3, 5]),
        ("{all: true}", [1, 2, 3, 5]),
        ("{specific: [1, 3, 7]}", [1, 3]),
    ],
)
def test_version_policy_selects_folders(policy: str, selected: list[int]) -> None:
    spec = parse_spec("m", f"runtime: onnx\nversion_policy: {policy}\n", "model.yaml")
    assert spec.version_policy.select([3, 1, 5, 2]) == selected


def test_version_policy_takes_one_kind() -> None:
    message = _error("runtime: onnx\nversion_policy: {latest: 1, all: true}\n")
    assert "field 'version_policy'" in message
    assert "give one of 'latest', 'all' or 'specific'" in message


def test_unknown_field_is_named() -> None:
    message = _error("runtime: onnx\nmax_batch: 8\n")
    assert "field 'max_batch': unknown field" in message


def test_unknown_nested_field_is_named_with_its_path() -> None:
    message = _error("runtime: onnx\nbatching:\n  max_delay_us: 10\n")
    assert "field 'batching.max_delay_us': unknown field" in message


def test_bad_datatype_lists_the_valid_ones() -> None:
    message = _error("runtime: fake\ninputs:\n  - {name: x, datatype: FLOAT32, shape: [3]}\n")
    assert "field 'inputs.0.datatype'" in message
    assert "expected one of BOOL, UINT8" in message and "'FLOAT32'" in message


def test_bad_type_says_what_was_expected() -> None:
    message = _error("runtime: onnx\nmax_batch_size: lots\n")
    assert "field 'max_batch_size'" in message and "valid integer" in message


def test_bad_device_says_what_was_expected() -> None:
    message = _error("runtime: onnx\ninstances: {device: tpu}\n")
    assert "field 'instances.device'" in message
    assert "'cpu', 'gpu' or 'auto'" in message


def test_bad_dimension() -> None:
    message = _error("runtime: fake\ninputs: [{name: x, datatype: FP32, shape: [0, 3]}]\n")
    assert "field 'inputs.0.shape'" in message and "-1 for a variable one" in message


def test_missing_runtime() -> None:
    message = _error("max_batch_size: 8\n")
    assert "field 'runtime': required field is missing" in message


def test_bad_yaml() -> None:
    message = _error("runtime: onnx\ninputs: [unclosed\n")
    assert "not valid YAML" in message


def test_yaml_that_is_not_a_mapping() -> None:
    message = _error("- runtime: onnx\n")
    assert "expected a mapping of fields, got list" in message


def test_preferred_batch_size_over_max() -> None:
    message = _error(
        "runtime: onnx\nmax_batch_size: 8\nbatching: {preferred_batch_sizes: [4, 16]}\n"
    )
    assert "preferred_batch_sizes [16] exceed max_batch_size 8" in message


def test_name_must_match_the_folder() -> None:
    message = _error("name: other\nruntime: onnx\n")
    assert "field 'name'" in message and "differs from its folder 'm'" in message


def test_version_labels_name_versions() -> None:
    spec = parse_spec("m", "runtime: onnx\nversion_labels: {stable: 1, canary: 2}\n", "y")
    assert spec.version_labels == {"stable": 1, "canary": 2}
    message = _error("runtime: onnx\nversion_labels: {'3': 1}\n")
    assert "field 'version_labels'" in message and "not numbers" in message
    message = _error("runtime: onnx\nversion_labels: {stable: 0}\n")
    assert "positive integers" in message


def test_several_problems_are_all_reported() -> None:
    message = _error("runtime: onnx\nmax_batch_size: -1\nthreads: {intra_op: x}\n")
    assert "field 'max_batch_size'" in message and "field 'threads.intra_op'" in message


def test_load_spec_names_the_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    with pytest.raises(SpecError) as info:
        load_spec(folder)
    assert info.value.message.startswith(str(folder / "model.yaml"))
    assert "missing" in info.value.message


def test_load_spec_reads_the_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "model.yaml").write_text("runtime: onnx\n")
    assert load_spec(folder) == ModelSpec(name="digits", runtime="onnx")


def test_load_spec_names_the_file_in_errors(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "model.yaml").write_text("runtime: onnx\nwarmup: {count: 2}\n")
    with pytest.raises(SpecError) as info:
        load_spec(folder)
    assert info.value.message.startswith(str(folder / "model.yaml"))
    assert "field 'warmup'" in info.value.message


def test_spec_is_frozen() -> None:
    spec = parse_spec("m", "runtime: onnx\n", "model.yaml")
    with pytest.raises(ValueError, match="frozen"):
        spec.max_batch_size = 3  # type: ignore[misc]
