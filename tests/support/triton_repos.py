"""Triton model repositories in code: ``<name>/config.pbtxt`` and version folders, no
model.yaml; and the small ONNX models of the Triton repository tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

from onnx import TensorProto, helper

from support.builders import _save, add_sub_onnx

ADD_SUB_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "INPUT1", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "OUTPUT1", data_type: TYPE_FP32, dims: [ 4 ] }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
"""

# Two add_sub steps, written in the file in the reverse of the order they must run:
# (A + B) + (A - B) = 2A and (A + B) - (A - B) = 2B.
ENSEMBLE_CONFIG = """\
name: "twice"
platform: "ensemble"
max_batch_size: 8
input [
  { name: "A", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "B", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [
  { name: "TWICE_A", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "TWICE_B", data_type: TYPE_FP32, dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "add_sub"
      model_version: -1
      input_map { key: "INPUT0" value: "sum" }
      input_map { key: "INPUT1" value: "difference" }
      output_map { key: "OUTPUT0" value: "TWICE_A" }
      output_map { key: "OUTPUT1" value: "TWICE_B" }
    },
    {
      model_name: "add_sub"
      model_version: 1
      input_map { key: "INPUT0" value: "A" }
      input_map { key: "INPUT1" value: "B" }
      output_map { key: "OUTPUT0" value: "sum" }
      output_map { key: "OUTPUT1" value: "difference" }
    }
  ]
}
"""

# Scores of four classes, returned as given; labels from a file, as Triton's are.
SCORES_CONFIG = """\
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ], label_filename: "labels.txt" } ]
"""
LABELS = ["cat", "dog", "bird", "fish"]


def write_triton_model(
    repo: Path, name: str, config: str, files: dict[str, bytes | str] | None = None
) -> Path:
    """Write ``repo/name/config.pbtxt`` and ``files`` (paths relative to the model folder)."""
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for rel, content in (files or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return folder


def scores_onnx(path: Path, width: int = 4) -> None:
    """OUTPUT0 = INPUT0, FP32 [batch, width]: a classifier whose scores the test picks."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "scores",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])],
    )
    _save(graph, path)


def write_triton_repository(repo: Path) -> Path:
    """add_sub (ONNX), the ``twice`` ensemble of it, and ``scores`` with labels: every
    model a config.pbtxt, none a model.yaml."""
    folder = write_triton_model(repo, "add_sub", ADD_SUB_CONFIG)
    add_sub_onnx(folder / "1" / "model.onnx")
    write_triton_model(repo, "twice", ENSEMBLE_CONFIG, {"1/.keep": ""})
    folder = write_triton_model(repo, "scores", SCORES_CONFIG, {"labels.txt": "\n".join(LABELS)})
    scores_onnx(folder / "1" / "model.onnx")
    return repo
