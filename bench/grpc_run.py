"""The gRPC benchmark: KServe v2 ModelInfer over gRPC, driven by h2load.

h2load (Debian's nghttp2-client) posts a pre-framed protobuf: the 5-byte gRPC frame
header, then a ModelInferRequest of one FP32 row of 256 with ``raw_input_contents``.
h2load cannot read gRPC trailers, so the server's own statistics are checked after
each run: every request h2load counted must be a success there.

    .venv/bin/python bench/grpc_run.py [--duration 10] [--repeats 3] [--quick]
    .venv/bin/python bench/grpc_run.py --heavy    # the compute-bound MLP, c=64 (issue 18)

Prints req/s and h2load's mean latency per concurrency (c connections, one stream
each), medians over the repeats. Nothing is asserted; only loopback is used.
"""

from __future__ import annotations

import argparse
import re
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_models import DEFAULTS, HEAVY_SIZES, build
from run import HOST, CpuMeter, free_port, git_commit, http, machine, ort_best_batched, server

from modelport.protos import grpc_service_pb2 as pb

PATH = "/inference.GRPCInferenceService/ModelInfer"


def framed_request(width: int, model: str = "mlp") -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, width])
    assert tensor.name == "INPUT0"
    row = np.random.default_rng(0).random((1, width), dtype=np.float32)
    request.raw_input_contents.append(row.tobytes())
    payload = request.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def successes(base: str, model: str = "mlp") -> int:
    """Requests ``model`` answered, over every server process (from /metrics)."""
    status, body = http(f"{base}/metrics")
    assert status == 200, body
    total = 0.0
    for line in body.decode().splitlines():
        if (
            line.startswith("modelport_requests_total{")
            and f'model="{model}"' in line
            and 'outcome="success"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def h2load(port: int, data: Path, clients: int, seconds: float) -> tuple[float, float, int]:
    """req/s, mean latency in ms, and requests completed."""
    cmd = [
        "h2load",
        f"http://{HOST}:{port}{PATH}",
        "-c",
        str(clients),
        "-m",
        "1",
        "-D",
        str(int(seconds)),
        "-t",
        "1",
        "-d",
        str(data),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    latency = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not (rate and done and latency):
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    mean = latency.group(1)
    ms = float(mean[:-2]) if mean.endswith("ms") else float(mean[:-2]) / 1000
    if mean.endswith("s") and not mean.endswith(("ms", "us")):
        ms = float(mean[:-1]) * 1000
    return float(rate.group(1)), ms, int(done.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 repeat")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--processes", type=int, default=1, help="modelport serve --processes")
    parser.add_argument(
        "--heavy",
        action="store_true",
        help="the heavy MLP with the two-line model.yaml at c=64, against in-process",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats = 3.0, 1
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.heavy and args.concurrency == "1,16,64":
        levels = [64]
    model, width = ("heavy", HEAVY_SIZES[0]) if args.heavy else ("mlp", 256)
    print(f"machine: {machine()}\nmodelport commit: {git_commit()}")
    with tempfile.TemporaryDirectory(prefix="modelport-grpc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        build(tmp / "repo", heavy=DEFAULTS if args.heavy else None)
        best = 0.0
        if args.heavy:
            print("\n== in-process ONNX Runtime, heavy (rows/s) ==")
            path = tmp / "repo" / "heavy" / "1" / "model.onnx"
            best, label = ort_best_batched(path, width, 5.0, args.repeats, print)
            print(f"  batch 64,    best ({label}): {best:,.0f} rows/s")
        data = tmp / "request.bin"
        data.write_bytes(framed_request(width, model))
        grpc_port = free_port()
        with server(
            tmp / "repo", tmp / "server.log", grpc_port=grpc_port, processes=args.processes
        ) as (base, pid):
            if args.heavy:
                h2load(grpc_port, data, 64, 2.0)  # warm-up
            print(f"\n== gRPC ModelInfer, one FP32 row of {width} to {model}, raw inputs ==")
            print("     c      req/s   mean ms   failed  other cpu")
            for clients in levels:
                rates, means, failed, other = [], [], 0, []
                for _ in range(args.repeats):
                    before = successes(base, model)
                    with CpuMeter(pid) as meter:
                        rate, mean, done = h2load(grpc_port, data, clients, args.duration)
                    failed += max(0, done - (successes(base, model) - before))
                    rates.append(rate)
                    means.append(mean)
                    other.append(meter.other)
                print(
                    f"  {clients:4d}  {statistics.median(rates):9,.0f}  "
                    f"{statistics.median(means):8.3f}  {failed:7d}  "
                    f"{statistics.median(other):9.2f}   (req/s per run: "
                    + ", ".join(f"{r:,.0f}" for r in rates)
                    + ")"
                )
                if best:
                    share = statistics.median(rates) / best
                    print(f"  served / best in-process batched: {share:.1%} (target >= 85%)")


if __name__ == "__main__":
    main()
