"""Build the benchmark's model repository: ``mlp`` and ``heavy``, two ONNX MLPs.

    .venv/bin/python bench/build_models.py [REPO] [--instances N] [--intra-op N]

``mlp`` is INPUT0 FP32 [batch, 256] -> 1024 -> ReLU -> 1024 -> ReLU -> 10 (OUTPUT0):
small enough that serving overhead, not the model, decides the request rate.
``heavy`` is 1024 -> 4096 -> ReLU -> 4096 -> ReLU -> 1000: the model decides, so served
throughput shows how much of the machine the server leaves to the model.

Weights come from a fixed numpy seed, so every run serves the same models.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MLP_SIZES = (256, 1024, 1024, 10)
HEAVY_SIZES = (1024, 4096, 4096, 1000)
SEED = 20240601


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """What model.yaml says about batching and parallelism for one model; ``None``
    leaves the field out, so the server's defaults choose."""

    max_batch_size: int = 64
    instances: int | None = 1
    intra_op: int | None = 1
    max_queue_delay_us: int = 0


# heavy's model.yaml is the two-line one (runtime, max_batch_size) unless told otherwise:
# issue 18 measures what a user who does not tune threads gets.
DEFAULTS = ServingSettings(instances=None, intra_op=None)


def mlp_graph(name: str, sizes: tuple[int, ...], seed: int = SEED) -> onnx.ModelProto:
    """INPUT0 [batch, sizes[0]] -> (MatMul + Add + ReLU) per hidden layer -> OUTPUT0."""
    rng = np.random.default_rng(seed)
    nodes, weights, current = [], [], "INPUT0"
    layers = list(itertools.pairwise(sizes))
    for i, (n_in, n_out) in enumerate(layers):
        last = i == len(layers) - 1
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]))
        added = "OUTPUT0" if last else f"a{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"B{i}"], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def model_yaml(settings: ServingSettings) -> str:
    lines = ["runtime: onnx", f"max_batch_size: {settings.max_batch_size}"]
    if settings.instances is not None:
        lines += ["instances:", f"  count: {settings.instances}"]
    if settings.intra_op is not None:
        lines += ["threads:", f"  intra_op: {settings.intra_op}", "  inter_op: 1"]
    if settings.max_queue_delay_us:
        lines += ["batching:", f"  max_queue_delay_us: {settings.max_queue_delay_us}"]
    return "\n".join(lines) + "\n"


def write_model(repo: Path, name: str, sizes: tuple[int, ...], settings: ServingSettings) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(mlp_graph(name, sizes), str(folder / "1" / "model.onnx"))
    (folder / "model.yaml").write_text(model_yaml(settings))
    return folder


def build(
    repo: Path,
    mlp: ServingSettings = ServingSettings(),
    heavy: ServingSettings | None = DEFAULTS,
) -> Path:
    """Write ``mlp`` (and ``heavy`` unless None) into ``repo``; returns ``repo``."""
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, "mlp", MLP_SIZES, mlp)
    if heavy is not None:
        write_model(repo, "heavy", HEAVY_SIZES, heavy)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", nargs="?", help="repository folder (default: a new temp dir)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--instances", type=int, default=1, help="mlp instances.count")
    parser.add_argument("--intra-op", type=int, default=1, help="mlp threads.intra_op")
    parser.add_argument("--max-queue-delay-us", type=int, default=0, help="mlp batching")
    parser.add_argument("--heavy-instances", type=int, help="default: model.yaml says none")
    parser.add_argument("--heavy-intra-op", type=int, help="default: model.yaml says none")
    parser.add_argument("--no-heavy", action="store_true", help="build only mlp")
    args = parser.parse_args()
    repo = Path(args.repo) if args.repo else Path(tempfile.mkdtemp(prefix="modelport-bench-"))
    mlp = ServingSettings(
        args.max_batch_size, args.instances, args.intra_op, args.max_queue_delay_us
    )
    heavy = ServingSettings(args.max_batch_size, args.heavy_instances, args.heavy_intra_op)
    build(repo, mlp, None if args.no_heavy else heavy)
    print(repo)


if __name__ == "__main__":
    main()
