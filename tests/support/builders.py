"""Build test model repositories in code: ONNX graphs, model.yaml files, python models."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# v2 datatype -> ONNX element type, for every datatype ONNX Runtime's Identity supports.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def mlp_onnx(path: Path, sizes: tuple[int, ...] = (256, 1024, 1024, 10), seed: int = 0) -> None:
    """INPUT0 FP32 [batch, sizes[0]] -> MatMul/ReLU layers -> OUTPUT0 FP32 [batch, sizes[-1]]."""
    rng = np.random.default_rng(seed)
    nodes, weights, current = [], [], "INPUT0"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"W{i}"))
        last = i == len(sizes) - 2
        out = "OUTPUT0" if last else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [out if last else f"m{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])],
        weights,
    )
    _save(graph, path)


def add_sub_onnx(path: Path, width: int = 4, datatype: str = "FP32") -> None:
    """OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, both [batch, width]."""
    t = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [helper.make_tensor_value_info(n, t, ["batch", width]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, t, ["batch", width]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    _save(graph, path)


def identity_onnx(path: Path, datatype: str) -> None:
    """OUTPUT0 = INPUT0 of one datatype, shape [batch, -1]."""
    t = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [helper.make_tensor_value_info("INPUT0", t, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", t, ["batch", "n"])],
    )
    _save(graph, path)


def write_model(
    repo: Path, name: str, model_yaml: str, files: dict[str, bytes | str] | None = None
) -> Path:
    """Write ``repo/name/model.yaml`` and ``files`` (paths relative to the model folder)."""
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(textwrap.dedent(model_yaml))
    for rel, content in (files or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content))
    return folder


def write_slow_model(repo: Path, name: str, delay_ms: int, max_queue_size: int) -> Path:
    """A ``fake``-runtime model that answers its input (INPUT0 -> OUTPUT0, FP32 [2]) one
    request at a time, taking ``delay_ms`` each, with at most ``max_queue_size`` waiting."""
    return write_model(
        repo,
        name,
        f"""\
        runtime: fake
        max_batch_size: 1
        inputs: [{{name: INPUT0, datatype: FP32, shape: [2]}}]
        outputs: [{{name: OUTPUT0, datatype: FP32, shape: [2]}}]
        batching: {{max_queue_size: {max_queue_size}}}
        parameters: {{delay_ms: {delay_ms}}}
        """,
        {"1/README": "the fake runtime needs no files"},
    )
