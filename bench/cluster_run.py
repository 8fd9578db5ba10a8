"""The scale-out benchmark: online req/s and tasks/s with 1, 2 and 4 workers, and the
latency a trip through Redis adds. One command, numbers printed, nothing asserted.

    .venv/bin/python bench/cluster_run.py [--workers 1,2,4] [--duration 10] [--repeats 3]

It prints the three numbers issue 18 item 4 sets targets for: one worker's online rate
as a share of its model's ideal rate (1000 / ``--delay-ms`` x ``--instances``), n
workers' rate as a multiple of n x one worker's (and as a share of the linear ideal),
and the p50 a trip through a worker adds. ``--src`` picks the source tree the servers
run (PYTHONPATH), so one sitting can measure an older tree beside this one.

Every worker hosts ``sleeper``, a python model whose compute is a fixed sleep
(``--delay-ms``, one request at a time an instance: one "GPU" per worker), and ``sleeper-task``, a
container model that sleeps ``--task-seconds`` (the busybox test image, imported into
the local Docker engine). A gateway (``modelport serve --broker``) that hosts neither
takes the requests: wrk drives ``POST /v2/models/sleeper/infer`` at ``--connections``,
and ``--tasks-per-worker`` tasks per worker are submitted at once and timed to the last
one finished. Perfect scaling is n times the one-worker number. Task records and files
are shared through a SQLite file and a folder (one host); Redis runs without
persistence. The added latency compares ``zero`` (the same python model, no sleep)
served by the gateway itself with ``zero-remote`` served by one worker, at c=1, the two
runs of each repeat back to back; the gateway also serves a copy of ``sleeper`` itself
(``sleeper-local``), whose rate is what one worker could reach with Redis costing nothing.
``--tasks-per-worker 0`` leaves the tasks out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from run import HOST, WRK_SCRIPT, HttpRun, free_port, machine, wrk

from support.task_fixtures import import_busybox_image

ROOT = Path(__file__).resolve().parent.parent
READY_S = 60.0

SLEEPER_PY = """\
import time


class Model:
    def setup(self, context):
        self.delay = context.spec.parameters.get("delay_ms", 0) / 1000

    def predict(self, inputs):
        time.sleep(self.delay)
        return {"y": inputs["x"] * 2}
"""
SLEEPER_YAML = """\
runtime: python
max_batch_size: 1
instances: {count: %d}
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs: [{name: y, datatype: FP32, shape: [4]}]
parameters: {delay_ms: %s}
"""
TASK_YAML = """\
runtime: container
container:
  image: %s
  command: [sh, -c, "sleep %s; echo done > /output/done"]
"""
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def write_model(repo: Path, name: str, yaml: str, files: dict[str, str]) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml)
    for rel, text in files.items():
        (folder / rel).write_text(text)


def repositories(
    root: Path, delay_ms: float, instances: int, task_s: float, image: str
) -> tuple[Path, Path]:
    worker, gateway = root / "worker-repo", root / "gateway-repo"
    sleeper = SLEEPER_YAML % (instances, delay_ms)
    write_model(worker, "sleeper", sleeper, {"1/model.py": SLEEPER_PY})
    write_model(worker, "zero-remote", SLEEPER_YAML % (1, 0), {"1/model.py": SLEEPER_PY})
    if image:
        write_model(worker, "sleeper-task", TASK_YAML % (image, task_s), {"1/README": "-"})
    write_model(gateway, "zero", SLEEPER_YAML % (1, 0), {"1/model.py": SLEEPER_PY})
    write_model(gateway, "sleeper-local", sleeper, {"1/model.py": SLEEPER_PY})
    return worker, gateway


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait(check: object, what: str) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {READY_S:.0f} s")


@contextmanager
def cluster(root: Path, workers: int, redis_url: str, shared: dict[str, str],
            worker_repo: Path, gateway_repo: Path) -> Iterator[str]:  # fmt: skip
    """``workers`` workers and a gateway on one Redis; yields the gateway's base URL."""
    exe = str(ROOT / ".venv" / "bin" / "modelport")
    port = free_port()
    base = f"http://{HOST}:{port}"
    with ExitStack() as stack:
        for i in range(workers):
            stack.enter_context(process(
                [exe, "worker", str(worker_repo), "--broker", redis_url, "--worker-id",
                 f"bench-{workers}-{i}"], root / f"worker-{workers}-{i}.log",
                {**shared, "MODELPORT_DATA_DIR": str(root / f"data-{workers}-{i}")},
            ))  # fmt: skip
        stack.enter_context(process(
            [exe, "serve", str(gateway_repo), "--port", str(port), "--grpc-port", "0",
             "--broker", redis_url], root / f"gateway-{workers}.log",
            {**shared, "MODELPORT_DATA_DIR": str(root / f"gateway-{workers}"),
             "MODELPORT_TASK_SLOTS": "0"},
        ))  # fmt: skip

        def up() -> bool:
            listed = httpx.get(f"{base}/api/workers", timeout=2).json()["workers"]
            mine = [w for w in listed if w["id"].startswith(f"bench-{workers}-")]
            routed = httpx.get(f"{base}/v2/models/sleeper/ready", timeout=2).status_code == 200
            return len(mine) == workers and routed

        wait(up, f"{workers} workers and the gateway")
        yield base


def task_throughput(base: str, count: int) -> float:
    """Tasks per second: ``count`` tasks submitted at once, timed to the last finished."""
    began = time.monotonic()
    ids = []
    for n in range(count):
        sent = httpx.post(f"{base}/api/tasks", data={"model": "sleeper-task"},
                          files=[("files", ("n", str(n).encode()))], timeout=30)  # fmt: skip
        sent.raise_for_status()
        ids.append(sent.json()["id"])
    pending = set(ids)
    while pending:
        for task_id in list(pending):
            status = httpx.get(f"{base}/api/tasks/{task_id}", timeout=10).json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                if status != "succeeded":
                    raise RuntimeError(f"task {task_id} {status}")
                pending.discard(task_id)
        time.sleep(0.05)
    return count / (time.monotonic() - began)


def spread(values: list[float], digits: int = 1) -> str:
    """A median with the range it came from: ``48.1 (47.0-48.9)``."""
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass(frozen=True, slots=True)
class Row:
    """One cluster size's runs: online (wrk at c=connections), tasks/s, and (one
    worker) (local, through a worker) pairs at c=1."""

    workers: int
    online: list[HttpRun]
    tasks: list[float]
    pairs: list[tuple[HttpRun, HttpRun]]
    local: list[HttpRun]  # one worker's row: sleeper served by the gateway itself

    @property
    def rps(self) -> float:
        return statistics.median(r.requests_per_s for r in self.online)


def measure(args: argparse.Namespace, n: int, base: str, files: tuple[Path, Path]) -> Row:
    """Online runs, task runs and (one worker) the latency pairs on a running cluster."""
    body, script = files
    online = [wrk(f"{base}/v2/models/sleeper/infer", body, script, args.connections, 2,
                  args.duration) for _ in range(args.repeats)]  # fmt: skip
    tasks = [task_throughput(base, args.tasks_per_worker * n)
             for _ in range(args.repeats if args.tasks_per_worker else 0)]  # fmt: skip
    pairs, own = [], []
    for _ in range(args.repeats if n == 1 else 0):
        own.append(wrk(f"{base}/v2/models/sleeper-local/infer", body, script,
                       args.connections, 2, args.duration))  # fmt: skip
        # The pair back to back, so both see the same load.
        local, remote = (wrk(f"{base}/v2/models/{m}/infer", body, script, 1, 1, args.duration)
                         for m in ("zero", "zero-remote"))  # fmt: skip
        pairs.append((local, remote))
    return Row(n, online, tasks, pairs, own)


def report(args: argparse.Namespace, rows: list[Row]) -> dict[str, object]:
    """Print the table and the three targets; return them for the JSON file."""
    one = rows[0]
    ideal = 1000 / args.delay_ms * args.instances
    print(
        f"\nonline: sleeper ({args.delay_ms:g} ms a request, {args.instances} instance(s), one "
        f"request at a time each: ideal {ideal:.0f} req/s a worker), c={args.connections}; "
        f"tasks: {args.task_seconds:g} s containers, one slot a worker; medians of "
        f"{args.repeats} (range)"
    )
    print(f"{'workers':>7} {'req/s':>20} {'x1 worker':>9} {'of linear':>9} {'p50 ms':>7} "
          f"{'tasks/s':>8} {'x1 worker':>9}")  # fmt: skip
    one_tasks = statistics.median(one.tasks) if one.tasks else 0.0
    for row in rows:
        rps = [r.requests_per_s for r in row.online]
        p50 = statistics.median(r.p50_ms for r in row.online)
        times = row.rps / one.rps
        tasks = statistics.median(row.tasks) if row.tasks else 0.0
        task_times = f"{tasks / one_tasks:>9.2f}" if one_tasks else f"{'-':>9}"
        linear = row.rps / (ideal * row.workers)
        print(f"{row.workers:>7} {spread(rps):>20} {times:>9.2f} {linear:>9.0%} "
              f"{p50:>7.1f} {tasks:>8.2f} {task_times}")  # fmt: skip
    found: dict[str, object] = {}
    print("\ntargets (issue 18 item 4):")
    if one.workers == 1:
        share = one.rps / ideal
        found["one_worker_of_ideal"] = share
        print(f"  one worker: {one.rps:.1f} req/s = {share:.0%} of its model's ideal "
              f"{ideal:.0f} req/s (target >= 90%): {verdict(share >= 0.9)}")  # fmt: skip
        if one.local:
            local = [r.requests_per_s for r in one.local]
            found["one_worker_of_local"] = one.rps / statistics.median(local)
            print(f"    the same model served by the gateway itself (no Redis): "
                  f"{spread(local)} req/s; one worker = {found['one_worker_of_local']:.0%} "
                  "of that")  # fmt: skip
    for row in rows:
        if row.workers > 1 and one.workers == 1:
            times = row.rps / (row.workers * one.rps)
            found[f"workers_{row.workers}_of_n_x_one"] = times
            print(f"  {row.workers} workers: {row.rps:.1f} req/s = {times:.2f} x ({row.workers} x "
                  f"one worker) (target >= 0.9): {verdict(times >= 0.9)}; "
                  f"{row.rps / (ideal * row.workers):.0%} of the linear ideal "
                  f"{ideal * row.workers:.0f} req/s")  # fmt: skip
    if one.pairs:
        local = [p[0].p50_ms for p in one.pairs]
        remote = [p[1].p50_ms for p in one.pairs]
        added = [r - loc for loc, r in zip(local, remote, strict=True)]
        p99 = [(p[0].p99_ms, p[1].p99_ms) for p in one.pairs]
        found["added_p50_ms"] = statistics.median(added)
        print(f"  added p50 through Redis (c=1, no compute): {spread(added, 2)} ms (local p50 "
              f"{spread(local, 2)}, through a worker {spread(remote, 2)}; p99 "
              f"{statistics.median(a for a, _ in p99):.2f} vs "
              f"{statistics.median(b for _, b in p99):.2f}) (target <= 0.5 ms): "
              f"{verdict(statistics.median(added) <= 0.5)}")  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--task-seconds", type=float, default=2.0)
    parser.add_argument("--tasks-per-worker", type=int, default=4)
    parser.add_argument("--src", default=str(ROOT / "src"),
                        help="the servers' PYTHONPATH: the source tree they run")  # fmt: skip
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, object] = {"machine": machine(), "args": vars(args)}
    print(f"machine: {results['machine']}; servers' PYTHONPATH {args.src}")
    image = import_busybox_image() if args.tasks_per_worker else ""
    root = Path(tempfile.mkdtemp(prefix="modelport-cluster-bench-"))
    worker_repo, gateway_repo = repositories(
        root, args.delay_ms, args.instances, args.task_seconds, image
    )
    script = root / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    body = root / "body.json"
    body.write_text(json.dumps(BODY))
    redis_port = free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    shared = {"MODELPORT_TASK_STORE": f"sqlite:///{root / 'tasks.db'}",
              "MODELPORT_TASK_FILES": str(root / "files"),
              "PYTHONPATH": args.src}  # fmt: skip
    rows = []
    with process(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly",
                  "no"], root / "redis.log", {}):  # fmt: skip
        for n in counts:
            with cluster(root, n, redis_url, shared, worker_repo, gateway_repo) as base:
                row = measure(args, n, base, (body, script))
            rows.append(row)
            tasks = f"; tasks {statistics.median(row.tasks):.2f}/s" if row.tasks else ""
            print(f"{n} worker(s): online {row.rps:,.1f} req/s (errors "
                  f"{sum(r.errors for r in row.online)}){tasks}", flush=True)  # fmt: skip
    results["targets"] = report(args, rows)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    results["rows"] = [
        {"workers": r.workers, "online_rps": [o.requests_per_s for o in r.online],
         "online_p50_ms": [o.p50_ms for o in r.online], "tasks_per_s": r.tasks,
         "latency_p50_ms": [(a.p50_ms, b.p50_ms) for a, b in r.pairs],
         "local_rps": [o.requests_per_s for o in r.local]}
        for r in rows
    ]  # fmt: skip
    path = out / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
