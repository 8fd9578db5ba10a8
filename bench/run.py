"""The modelport serving benchmark: one command, numbers printed, nothing asserted.

    .venv/bin/python bench/run.py [--duration 10] [--repeats 3] [--quick]

Builds ``mlp`` and ``heavy`` (bench/build_models.py) into a temp repository, measures
ONNX Runtime in process, then starts ``modelport serve`` on a free loopback port and
drives ``POST /v2/models/<m>/infer`` with single-row v2 JSON requests from wrk.
Every measurement is repeated ``--repeats`` times and the median is printed. See
bench/README.md for what each number means and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_models import HEAVY_SIZES, MLP_SIZES, ServingSettings, build

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0

# wrk prints its own report; this done() adds one machine-readable line (latency in us).
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY"), "rb"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %.1f %.1f %.1f %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

# The same with Triton's binary tensor data (what tritonclient.http sends by default):
# a JSON header of BENCH_JSON_LENGTH bytes, then the raw tensor; raw outputs back.
WRK_BINARY_SCRIPT = WRK_SCRIPT.replace(
    'wrk.headers["Content-Type"] = "application/json"',
    'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    'wrk.headers["Inference-Header-Content-Length"] = os.getenv("BENCH_JSON_LENGTH")',
)


@dataclass(frozen=True, slots=True)
class HttpRun:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    other_cpu: float = 0.0


def median_run(runs: list[HttpRun]) -> HttpRun:
    """Each field's median over the runs (so the p99 need not come from the same run)."""
    return HttpRun(
        statistics.median(r.requests_per_s for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
        max(r.other_cpu for r in runs),
    )


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (``modelport serve --processes N``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


class CpuMeter:
    """CPU (in cores) used during a run by processes other than ours, wrk and the server.

    The machine may be shared (tests, type checkers): a number taken while something else
    ran is not comparable, so every measurement prints how busy the rest was.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid

    def _busy_s(self) -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return 0.0
        values = [int(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return (sum(values[:8]) - idle) / self.TICK

    def _ours_s(self) -> float:
        me, kids = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
        total = me.user + me.system + kids.ru_utime + kids.ru_stime
        if self.pid is not None:
            for pid in process_tree(self.pid):  # the server, or its processes
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(stat[11]) + int(stat[12])) / self.TICK
                except (OSError, IndexError, ValueError):
                    pass
        return total

    def __enter__(self) -> CpuMeter:
        self.start = (time.perf_counter(), self._busy_s(), self._ours_s())
        self.other = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.start[0]
        busy = self._busy_s() - self.start[1]
        ours = self._ours_s() - self.start[2]
        self.other = max(0.0, busy - ours) / wall if wall > 0 else 0.0


# -- machine -------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cpus, {model}, Python {platform.python_version()}"


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return f"{commit}{' (+ uncommitted changes in src/)' if dirty else ''}"


# -- in-process ONNX Runtime ---------------------------------------------------------------


def ort_session(path: Path, intra_op: int, spinning: bool) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    options.inter_op_num_threads = 1
    flag = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", flag)
    options.add_session_config_entry("session.inter_op.allow_spinning", flag)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_rows_per_s(session: object, width: int, batch: int, seconds: float) -> float:
    """Rows per second running ``batch``-row inputs back to back for ``seconds``."""
    x = np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)
    run = session.run  # type: ignore[attr-defined]
    for _ in range(3):
        run(["OUTPUT0"], {"INPUT0": x})
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        run(["OUTPUT0"], {"INPUT0": x})
        calls += 1
        if calls % 8 == 0 and time.perf_counter() >= deadline:
            break
    return calls * batch / (time.perf_counter() - start)


def ort_median(
    path: Path, width: int, batch: int, intra_op: int, spinning: bool, seconds: float, n: int
) -> tuple[float, float]:
    """Median rows/s over ``n`` runs, and the most other CPU seen during one (cores)."""
    session = ort_session(path, intra_op, spinning)
    rates, other = [], 0.0
    for _ in range(n):
        with CpuMeter() as meter:
            rates.append(ort_rows_per_s(session, width, batch, seconds))
        other = max(other, meter.other)
    return statistics.median(rates), other


THREAD_SETTINGS = [(1, False), (2, False), (1, True), (2, True)]


def ort_sessions_median(
    path: Path, width: int, batch: int, sessions: int, seconds: float, n: int
) -> tuple[float, float]:
    """As :func:`ort_median` with ``sessions`` one-thread sessions run side by side on
    as many threads (ONNX Runtime lets go of the GIL): what several instances or
    server processes of one thread each could reach at best."""
    pool = [ort_session(path, 1, False) for _ in range(sessions)]
    rates, other = [], 0.0
    with ThreadPoolExecutor(sessions) as threads:
        for _ in range(n):
            with CpuMeter() as meter:
                parts = threads.map(lambda s: ort_rows_per_s(s, width, batch, seconds), pool)
                rates.append(sum(parts))
            other = max(other, meter.other)
    return statistics.median(rates), other


def ort_best_batched(
    path: Path, width: int, seconds: float, n: int, log: Callable[[str], None]
) -> tuple[float, str]:
    best, label = 0.0, ""
    for intra_op, spinning in THREAD_SETTINGS:
        rate, other = ort_median(path, width, 64, intra_op, spinning, seconds, n)
        this = f"intra_op={intra_op} spinning={'on' if spinning else 'off'}"
        log(f"    batch 64, {this}: {rate:,.0f} rows/s  (other cpu {other:.2f})")
        if rate > best:
            best, label = rate, this
    cores = os.cpu_count() or 1
    if cores > 1:
        rate, other = ort_sessions_median(path, width, 64, cores, seconds, n)
        this = f"{cores} sessions x intra_op=1 side by side"
        log(f"    batch 64, {this}: {rate:,.0f} rows/s  (other cpu {other:.2f})")
        if rate > best:
            best, label = rate, this
    return best, label


# -- the server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http(url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def server(
    repo: Path, log_path: Path, grpc_port: int = 0, processes: int = 1
) -> Iterator[tuple[str, int]]:
    """``modelport serve repo`` on a free loopback port, ready; yields (base url, pid).
    With ``processes`` > 1 the pid is the supervisor's; ready means every process is."""
    port = free_port()
    exe = ROOT / ".venv" / "bin" / "modelport"
    cmd = [
        str(exe),
        "serve",
        str(repo),
        "--host",
        HOST,
        "--port",
        str(port),
        "--processes",
        str(processes),
    ]
    # gRPC stays on (as in a default `modelport serve`), on a port of its own.
    env = {"MODELPORT_GRPC_PORT": str(grpc_port or free_port()), **os.environ}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=repo, env=env)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {READY_TIMEOUT_S:.0f}s; see {log_path}")
            try:
                up = http(f"{base}/v2/health/ready", timeout=1.0)[0] == 200
                # Several processes: the supervisor's banner says all of them are ready.
                if up and (processes == 1 or b"each with every model" in log_path.read_bytes()):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def request_body(width: int) -> bytes:
    data = np.random.default_rng(2).standard_normal(width).astype(np.float32)
    doc = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, width], "data": data.tolist()}
        ]
    }
    return json.dumps(doc).encode()


def binary_request_body(width: int) -> tuple[bytes, int]:
    """The row of :func:`request_body` in binary form, and its JSON header's length."""
    data = np.random.default_rng(2).standard_normal(width).astype(np.float32)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [1, width],
                    "parameters": {"binary_data_size": data.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + data.tobytes(), len(head)


def check_answer(base: str, model: str, body: bytes, width_out: int) -> None:
    status, out = http(f"{base}/v2/models/{model}/infer", body, timeout=30.0)
    if status != 200:
        raise RuntimeError(f"{model}: infer answered {status}: {out[:300]!r}")
    outputs = json.loads(out)["outputs"]
    if outputs[0]["shape"] != [1, width_out]:
        raise RuntimeError(f"{model}: unexpected output {outputs[0]['shape']}")


def wrk(
    url: str,
    body_path: Path,
    script: Path,
    connections: int,
    threads: int,
    seconds: float,
    server_pid: int | None = None,
    json_length: int | None = None,
) -> HttpRun:
    threads = max(1, min(threads, connections))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    env = {**os.environ, "BENCH_BODY": str(body_path), "BENCH_JSON_LENGTH": str(json_length)}
    with CpuMeter(server_pid) as meter:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
        )
    return HttpRun(*wrk_summary(done), meter.other)


def wrk_summary(done: subprocess.CompletedProcess[str]) -> tuple[float, float, float, int]:
    """req/s, p50 ms, p99 ms and errors from the BENCH line the Lua scripts print."""
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    _, requests, duration_us, p50, p99, _max, status_errors, socket_errors = line.split()
    return (
        int(requests) / (int(duration_us) / 1e6),
        float(p50) / 1000,
        float(p99) / 1000,
        int(status_errors) + int(socket_errors),
    )


def serve_heavy(
    url: str,
    body: Path,
    script: Path,
    json_length: int | None,
    args: argparse.Namespace,
    pid: int,
    best_ort: float | None,
    log: Callable[[str], None],
) -> float:
    """wrk at c=64 on the heavy model; prints rows/s and the share of in-process best."""
    wrk(url, body, script, 64, args.wrk_threads, 2.0, json_length=json_length)  # warm-up
    runs = [
        wrk(url, body, script, 64, args.wrk_threads, args.duration, pid, json_length)
        for _ in range(args.repeats)
    ]
    m = median_run(runs)
    log(
        f"  c=64: {m.requests_per_s:,.0f} rows/s, p50 {m.p50_ms:.2f} ms, "
        f"p99 {m.p99_ms:.2f} ms, errors {m.errors}, other cpu {m.other_cpu:.2f}"
    )
    if best_ort:
        share = m.requests_per_s / best_ort
        log(f"  served / best in-process batched: {share:.1%} (target > 85%)")
    return m.requests_per_s


@contextmanager
def profiler(pid: int, path: Path | None, seconds: float) -> Iterator[None]:
    """py-spy record of the server for ``seconds`` while the body runs (when ``path``)."""
    spy = ROOT / ".venv" / "bin" / "py-spy"
    if path is None:
        yield
        return
    cmd = [
        str(spy),
        "record",
        "--pid",
        str(pid),
        "--duration",
        f"{max(1, int(seconds))}",
        "--rate",
        "200",
        "--nonblocking",
        "--format",
        "raw" if path.suffix == ".txt" else "flamegraph",
        "-o",
        str(path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 repeat")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (capped at -c)")
    parser.add_argument("--ort-seconds", type=float, default=3.0, help="per in-process run")
    parser.add_argument("--instances", type=int, default=1, help="mlp instances.count")
    parser.add_argument("--intra-op", type=int, default=1, help="mlp threads.intra_op")
    parser.add_argument("--max-queue-delay-us", type=int, default=0, help="mlp batching")
    parser.add_argument(
        "--heavy-instances", type=int, help="heavy instances.count (default: not in model.yaml)"
    )
    parser.add_argument(
        "--heavy-intra-op", type=int, help="heavy threads.intra_op (default: not in model.yaml)"
    )
    parser.add_argument("--heavy-max-batch", type=int, default=64, help="heavy max_batch_size")
    parser.add_argument("--no-heavy", action="store_true", help="skip the heavy model")
    parser.add_argument("--no-inprocess", action="store_true", help="skip in-process ORT")
    parser.add_argument("--heavy-only", action="store_true", help="skip the mlp")
    parser.add_argument("--profile", type=Path, help="py-spy record the server at max c here")
    parser.add_argument("--keep", action="store_true", help="keep the temp repository")
    parser.add_argument("--processes", type=int, default=1, help="modelport serve --processes")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.ort_seconds = 3.0, 1, 1.5
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    levels = [int(c) for c in args.concurrency.split(",")]

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"machine: {machine()}")
    log(f"modelport commit: {git_commit()}")
    log(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    log(f"runs: {args.repeats} x {args.duration:g} s per point (medians), wrk -t{args.wrk_threads}")

    tmp = Path(tempfile.mkdtemp(prefix="modelport-bench-"))
    repo = tmp / "models"
    mlp = ServingSettings(64, args.instances, args.intra_op, args.max_queue_delay_us)
    heavy = ServingSettings(args.heavy_max_batch, args.heavy_instances, args.heavy_intra_op)
    build(repo, mlp, None if args.no_heavy else heavy)
    log(
        f"mlp: instances={args.instances} intra_op={args.intra_op} "
        f"max_queue_delay_us={args.max_queue_delay_us}; heavy: instances="
        f"{args.heavy_instances or '(default)'} intra_op={args.heavy_intra_op or '(default)'}"
    )

    results: dict[str, float] = {}
    try:
        if not args.no_inprocess and not args.heavy_only:
            log("\n== in-process ONNX Runtime, mlp (rows/s) ==")
            path = repo / "mlp" / "1" / "model.onnx"
            n, secs = args.repeats, args.ort_seconds
            rate, other = ort_median(path, MLP_SIZES[0], 1, 1, False, secs, n)
            log(
                f"  single rows, intra_op=1 spinning=off: {rate:,.0f} rows/s  "
                f"(other cpu {other:.2f})"
            )
            rate, other = ort_median(path, MLP_SIZES[0], 64, 1, False, secs, n)
            log(
                f"  batch 64,    intra_op=1 spinning=off: {rate:,.0f} rows/s  "
                f"(other cpu {other:.2f})"
            )
            best, label = ort_best_batched(path, MLP_SIZES[0], secs, n, log)
            log(f"  batch 64,    best ({label}): {best:,.0f} rows/s")
        if not args.no_inprocess and not args.no_heavy:
            log("\n== in-process ONNX Runtime, heavy (rows/s) ==")
            path = repo / "heavy" / "1" / "model.onnx"
            secs, n = args.ort_seconds, args.repeats
            best, label = ort_best_batched(path, HEAVY_SIZES[0], secs, n, log)
            results["heavy_ort"] = best
            log(f"  batch 64,    best ({label}): {best:,.0f} rows/s")

        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        mlp_body, heavy_body = tmp / "mlp.json", tmp / "heavy.json"
        mlp_body.write_bytes(request_body(MLP_SIZES[0]))
        heavy_body.write_bytes(request_body(HEAVY_SIZES[0]))
        with server(repo, tmp / "server.log", processes=args.processes) as (base, pid):
            if not args.heavy_only:
                log("\n== served over HTTP/JSON: POST /v2/models/mlp/infer, one row per request ==")
                log(f"  server pid {pid} at {base}; body {mlp_body.stat().st_size} bytes")
                check_answer(base, "mlp", mlp_body.read_bytes(), MLP_SIZES[-1])
                url = f"{base}/v2/models/mlp/infer"
                wrk(url, mlp_body, script, max(levels), args.wrk_threads, 2.0)  # warm-up
                log(
                    f"  {'c':>4} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
                    f"{'other cpu':>9}"
                )
                for c in levels:
                    runs = []
                    for i in range(args.repeats):
                        profile = args.profile if c == max(levels) and i == 0 else None
                        with profiler(pid, profile, args.duration):
                            runs.append(
                                wrk(url, mlp_body, script, c, args.wrk_threads, args.duration, pid)
                            )
                    m = median_run(runs)
                    results[f"c{c}_rps"] = m.requests_per_s
                    each = ", ".join(f"{r.requests_per_s:,.0f}" for r in runs)
                    log(
                        f"  {c:>4} {m.requests_per_s:>10,.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.2f} "
                        f"{m.errors:>7} {m.other_cpu:>9.2f}   (req/s per run: {each})"
                    )
            if not args.no_heavy:
                binary_script = tmp / "post_binary.lua"
                binary_script.write_text(WRK_BINARY_SCRIPT)
                binary_body, json_length = binary_request_body(HEAVY_SIZES[0])
                heavy_binary = tmp / "heavy.bin"
                heavy_binary.write_bytes(binary_body)
                check_answer(base, "heavy", heavy_body.read_bytes(), HEAVY_SIZES[-1])
                for label, body, lua, length in (
                    ("v2 JSON", heavy_body, script, None),
                    ("binary tensor data", heavy_binary, binary_script, json_length),
                ):
                    log(f"\n== served heavy ({label}): POST /v2/models/heavy/infer, one row ==")
                    results[f"heavy {label}"] = serve_heavy(
                        f"{base}/v2/models/heavy/infer",
                        body,
                        lua,
                        length,
                        args,
                        pid,
                        results.get("heavy_ort"),
                        log,
                    )
        if args.profile:
            log(f"\nprofile of the server at c={max(levels)}: {args.profile}")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
