"""The GPU benchmark: a ResNet-like ONNX network (built here, seeded) on the best
execution provider this ONNX Runtime has (TensorRT, then CUDA, else the CPU), in
process and served, in one table. One command, numbers printed, nothing asserted.

    .venv/bin/python bench/gpu.py            (on a GPU host: under 8 minutes)
    .venv/bin/python bench/gpu.py --quick    (small pictures, 1 s runs: the CPU check CI runs)

Rows, for FP32 and FP16 (where the provider runs FP16) and each batch size:
- ``in process``: ``session.run`` from one thread, inputs as numpy arrays;
- ``io binding``: the same with the input bound once (on the GPU for CUDA/TensorRT),
  outputs left where the provider wrote them: what a pipeline that keeps tensors on the
  device sees;
- ``served gRPC``: ``modelport serve`` on the same model (instances on the GPU where
  there is one), driven by ``modelport bench --protocol grpc`` (raw tensors, h2load when
  installed) at the given concurrency, rows/s = requests/s x batch.
While each row runs, NVML (nvidia-ml-py, the gpu extra) is sampled every 0.25 s for the
GPU's utilization and memory; where NVML cannot start the columns say n/a.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HOST, free_port, machine

from modelport.observability.gpus import Nvml

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Shape:
    size: int  # picture side
    width: int  # channels after the stem
    blocks: int  # residual blocks
    classes: int


FULL = Shape(size=224, width=64, blocks=4, classes=1000)
QUICK = Shape(size=32, width=16, blocks=2, classes=10)


def resnet_like(shape: Shape, *, fp16: bool, seed: int = 0) -> onnx.ModelProto:
    """stem conv 7x7/2 -> relu -> ``blocks`` x (conv3x3-relu-conv3x3 + skip, relu) ->
    global average pool -> dense: the shape of a ResNet, weights from ``seed``."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if fp16 else np.float32
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, dims: tuple[int, ...], fan_in: int) -> str:
        data = rng.normal(0, (2 / fan_in) ** 0.5, dims).astype(dtype)
        inits.append(numpy_helper.from_array(data, name))
        return name

    def conv(x: str, out: str, *, cin: int, cout: int, k: int, stride: int = 1) -> str:
        w = weight(out + "_w", (cout, cin, k, k), cin * k * k)
        b = weight(out + "_b", (cout,), cin * k * k)
        pad = k // 2
        nodes.append(
            helper.make_node("Conv", [x, w, b], [out], strides=[stride, stride], pads=[pad] * 4)
        )
        return out

    def relu(x: str, out: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    x = relu(conv("images", "stem", cin=3, cout=shape.width, k=7, stride=2), "stem_relu")
    for i in range(shape.blocks):
        y = relu(conv(x, f"b{i}_c1", cin=shape.width, cout=shape.width, k=3), f"b{i}_r1")
        y = conv(y, f"b{i}_c2", cin=shape.width, cout=shape.width, k=3)
        nodes.append(helper.make_node("Add", [x, y], [f"b{i}_sum"]))
        x = relu(f"b{i}_sum", f"b{i}_out")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    w = weight("fc_w", (shape.width, shape.classes), shape.width)
    b = weight("fc_b", (shape.classes,), shape.width)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "resnet_like",
        [helper.make_tensor_value_info("images", elem, ["batch", 3, shape.size, shape.size])],
        [helper.make_tensor_value_info("logits", elem, ["batch", shape.classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def best_provider() -> str:
    available = ort.get_available_providers()
    return next(p for p in PROVIDERS if p in available)


class GpuSampler:
    """NVML readings every 0.25 s while a row runs: mean utilization, peak memory."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml

    @contextmanager
    def sampling(self) -> Iterator[dict[str, float]]:
        found: dict[str, float] = {}
        if not self.nvml.available:
            yield found
            return
        stop = threading.Event()
        utilization: list[float] = []
        memory: list[int] = []

        def sample() -> None:
            while not stop.wait(0.25):
                for reading in self.nvml.read()[:1]:
                    utilization.append(reading.utilization_percent)
                    memory.append(reading.memory_used_bytes)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield found
        finally:
            stop.set()
            thread.join()
            if utilization:
                found["gpu_util"] = statistics.mean(utilization)
                found["gpu_mem_gib"] = max(memory) / 2**30


@dataclass(frozen=True)
class Row:
    mode: str
    precision: str
    batch: int
    concurrency: int
    rows_per_s: float
    p50_ms: float | None
    gpu: dict[str, float]


def timed(call: Callable[[], Any], seconds: float) -> tuple[float, list[float]]:
    """Calls per second and each call's latency (ms) over ``seconds``."""
    call()  # warm
    latencies: list[float] = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1000)
    return len(latencies) / (time.perf_counter() - began), latencies


def session(path: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, PROVIDERS[-1]]
    return ort.InferenceSession(str(path), options, providers=providers)


def in_process_rows(
    path: Path,
    *,
    provider: str,
    precision: str,
    shape: Shape,
    batches: list[int],
    seconds: float,
    sampler: GpuSampler,
) -> list[Row]:
    rows = []
    runner = session(path, provider)
    device = "cpu" if provider == "CPUExecutionProvider" else "cuda"
    dtype = np.float16 if precision == "fp16" else np.float32
    for batch in batches:
        x = np.random.default_rng(1).random((batch, 3, shape.size, shape.size)).astype(dtype)
        with sampler.sampling() as gpu:
            rate, lat = timed(lambda x=x: runner.run(None, {"images": x}), seconds)
        rows.append(Row("in process", precision, batch, 1, rate * batch, _p50(lat), gpu))
        binding = runner.io_binding()
        binding.bind_ortvalue_input("images", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
        binding.bind_output("logits", device)
        with sampler.sampling() as gpu:
            rate, lat = timed(lambda b=binding: runner.run_with_iobinding(b), seconds)
        rows.append(Row("io binding", precision, batch, 1, rate * batch, _p50(lat), gpu))
    return rows


def _p50(latencies: list[float]) -> float | None:
    return statistics.median(latencies) if latencies else None


@contextmanager
def served(folder: Path, *, gpu: bool) -> Iterator[str]:
    """``modelport serve`` on ``folder`` (HTTP for health, gRPC for the load)."""
    http, grpc = free_port(), free_port()
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", str(folder / "repo"), "--port", str(http),
         "--grpc-port", str(grpc)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={"MODELPORT_DATA_DIR": str(folder / "data"), "PATH": "/usr/bin:/bin",
             **({"MODELPORT_GPUS": "0"} if gpu else {})},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://{HOST}:{http}/v2/health/ready", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: see {log.name}")
            time.sleep(0.2)
        yield f"{HOST}:{grpc}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def served_rows(
    folder: Path,
    *,
    model: str,
    precision: str,
    batch: int,
    concurrency: list[int],
    seconds: float,
    sampler: GpuSampler,
    target: str,
) -> list[Row]:
    rows = []
    for c in concurrency:
        out = folder / f"{model}-{batch}-{c}.json"
        with sampler.sampling() as gpu:
            ran = subprocess.run(
                [sys.executable, "-m", "modelport", "bench", model, "--url", target,
                 "--protocol", "grpc", "--concurrency", str(c),
                 "--duration", str(max(1, round(seconds))),
                 "--shape", f"images:{batch},3,-1,-1".replace("-1,-1", _side(folder, model)),
                 "--json", str(out)],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
        if ran.returncode != 0:
            raise RuntimeError(f"modelport bench failed:\n{ran.stdout}\n{ran.stderr}")
        [result] = json.loads(out.read_text())["results"]
        p50 = (result["latency_ms"] or {}).get("p50")
        rows.append(
            Row("served gRPC", precision, batch, c, result["requests_per_s"] * batch, p50, gpu)
        )
    return rows


def _side(folder: Path, model: str) -> str:
    size = json.loads((folder / "repo" / model / "shape.json").read_text())["size"]
    return f"{size},{size}"


def write_repository(
    folder: Path, models: dict[str, onnx.ModelProto], *, gpu: bool, shape: Shape
) -> None:
    for name, model in models.items():
        version = folder / "repo" / name / "1"
        version.mkdir(parents=True)
        onnx.save(model, str(version / "model.onnx"))
        device = "gpu" if gpu else "cpu"
        (folder / "repo" / name / "model.yaml").write_text(
            f"runtime: onnx\nmax_batch_size: 64\ninstances: {{device: {device}}}\n"
        )
        (folder / "repo" / name / "shape.json").write_text(json.dumps({"size": shape.size}))


def print_table(rows: list[Row], *, provider: str, nvml: Nvml) -> None:
    print(
        f"\nprovider: {provider}; NVML: {'yes' if nvml.available else 'n/a (' + nvml.why_not + ')'}"
    )
    print(f"{'mode':<12} {'prec':<5} {'batch':>5} {'c':>3} {'rows/s':>10} {'p50 ms':>8} "
          f"{'gpu util':>8} {'gpu mem':>8}")  # fmt: skip
    for r in rows:
        util = f"{r.gpu['gpu_util']:.0f}%" if "gpu_util" in r.gpu else "n/a"
        mem = f"{r.gpu['gpu_mem_gib']:.1f}G" if "gpu_mem_gib" in r.gpu else "n/a"
        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else "-"
        print(f"{r.mode:<12} {r.precision:<5} {r.batch:>5} {r.concurrency:>3} "
              f"{r.rows_per_s:>10,.1f} {p50:>8} {util:>8} {mem:>8}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small network, 1 s runs")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--batches", default=None, help="comma-separated")
    parser.add_argument("--concurrency", default=None, help="served, comma-separated")
    parser.add_argument("--no-served", action="store_true")
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    provider = best_provider()
    on_gpu = provider != "CPUExecutionProvider"
    batches = [
        int(b)
        for b in (args.batches or ("1,8" if args.quick or not on_gpu else "1,8,32")).split(",")
    ]
    concurrency = [
        int(c) for c in (args.concurrency or ("4" if args.quick else "1,8,32")).split(",")
    ]
    nvml = Nvml.open()
    sampler = GpuSampler(nvml)
    print(machine())
    print(f"onnxruntime {ort.__version__}; providers: {', '.join(ort.get_available_providers())}")
    precisions = ["fp32", "fp16"]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="modelport-bench-gpu-") as name:
        folder = Path(name)
        models = {f"resnet_{p}": resnet_like(shape, fp16=p == "fp16") for p in precisions}
        write_repository(folder, models, gpu=on_gpu, shape=shape)
        for precision in precisions:
            path = folder / "repo" / f"resnet_{precision}" / "1" / "model.onnx"
            try:
                rows += in_process_rows(
                    path, provider=provider, precision=precision, shape=shape,
                    batches=batches, seconds=seconds, sampler=sampler,
                )  # fmt: skip
            except Exception as exc:  # FP16 kernels missing on this provider
                print(f"{precision} in process: not run on {provider}: {str(exc)[:160]}")
                precisions = [p for p in precisions if p != precision]
        if not args.no_served:
            with served(folder, gpu=on_gpu) as target:
                for precision in precisions:
                    rows += served_rows(
                        folder, model=f"resnet_{precision}", precision=precision,
                        batch=batches[-1], concurrency=concurrency, seconds=seconds,
                        sampler=sampler, target=target,
                    )  # fmt: skip
    print_table(rows, provider=provider, nvml=nvml)


if __name__ == "__main__":
    main()
