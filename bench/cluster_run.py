"""The scale-out benchmark: online req/s and tasks/s with 1, 2 and 4 workers, and the
latency a trip through Redis adds. One command, numbers printed, nothing asserted.

    .venv/bin/python bench/cluster_run.py [--workers 1,2,4] [--duration 10] [--repeats 3]

Every worker hosts ``sleeper``, a python model whose compute is a fixed sleep
(``--delay-ms``, one request at a time: one "GPU" per worker), and ``sleeper-task``, a
container model that sleeps ``--task-seconds`` (the busybox test image, imported into
the local Docker engine). A gateway (``modelport serve --broker``) that hosts neither
takes the requests: wrk drives ``POST /v2/models/sleeper/infer`` at ``--connections``,
and ``--tasks-per-worker`` tasks per worker are submitted at once and timed to the last
one finished. Perfect scaling is n times the one-worker number. Task records and files
are shared through a SQLite file and a folder (one host); Redis runs without
persistence. The added latency compares ``zero`` (the same python model, no sleep)
served by the gateway itself with ``zero-remote`` served by one worker, at c=1.
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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from run import HOST, WRK_SCRIPT, HttpRun, free_port, machine, median_run, wrk

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


def repositories(root: Path, delay_ms: float, task_s: float, image: str) -> tuple[Path, Path]:
    worker, gateway = root / "worker-repo", root / "gateway-repo"
    write_model(worker, "sleeper", SLEEPER_YAML % delay_ms, {"1/model.py": SLEEPER_PY})
    write_model(worker, "zero-remote", SLEEPER_YAML % 0, {"1/model.py": SLEEPER_PY})
    write_model(worker, "sleeper-task", TASK_YAML % (image, task_s), {"1/README": "-"})
    write_model(gateway, "zero", SLEEPER_YAML % 0, {"1/model.py": SLEEPER_PY})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--task-seconds", type=float, default=2.0)
    parser.add_argument("--tasks-per-worker", type=int, default=4)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, object] = {"machine": machine(), "args": vars(args)}
    print(f"machine: {results['machine']}")
    image = import_busybox_image()
    root = Path(tempfile.mkdtemp(prefix="modelport-cluster-bench-"))
    worker_repo, gateway_repo = repositories(root, args.delay_ms, args.task_seconds, image)
    script = root / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    body = root / "body.json"
    body.write_text(json.dumps(BODY))
    redis_port = free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    shared = {"MODELPORT_TASK_STORE": f"sqlite:///{root / 'tasks.db'}",
              "MODELPORT_TASK_FILES": str(root / "files")}  # fmt: skip
    rows = []
    with process(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly",
                  "no"], root / "redis.log", {}):  # fmt: skip
        for n in counts:
            with cluster(root, n, redis_url, shared, worker_repo, gateway_repo) as base:
                url = f"{base}/v2/models/sleeper/infer"
                online = median_run([
                    wrk(url, body, script, args.connections, 2, args.duration)
                    for _ in range(args.repeats)
                ])  # fmt: skip
                tasks = statistics.median(
                    task_throughput(base, args.tasks_per_worker * n) for _ in range(args.repeats)
                )
                latency: tuple[HttpRun, HttpRun] | None = None
                if n == 1:
                    local, remote = (
                        median_run([wrk(f"{base}/v2/models/{m}/infer", body, script, 1, 1,
                                        args.duration) for _ in range(args.repeats)])
                        for m in ("zero", "zero-remote")
                    )  # fmt: skip
                    latency = (local, remote)
            rows.append((n, online, tasks, latency))
            print(f"{n} worker(s): online {online.requests_per_s:,.0f} req/s "
                  f"(p50 {online.p50_ms:.1f} ms, p99 {online.p99_ms:.1f} ms, "
                  f"errors {online.errors}); tasks {tasks:.2f}/s", flush=True)  # fmt: skip
    one_online, one_tasks = rows[0][1].requests_per_s, rows[0][2]
    ideal_online = 1000 / args.delay_ms
    print(
        f"\nonline: sleeper ({args.delay_ms:g} ms a request, one at a time a worker: ideal "
        f"{ideal_online:.0f} req/s a worker), c={args.connections}; tasks: "
        f"{args.task_seconds:g} s containers, one slot a worker; medians of {args.repeats}"
    )
    print(
        f"{'workers':>7} {'req/s':>8} {'x1 worker':>9} {'of linear':>9} "
        f"{'tasks/s':>8} {'x1 worker':>9} {'of linear':>9}"
    )
    for n, online, tasks, _ in rows:
        speed_o, speed_t = online.requests_per_s / one_online, tasks / one_tasks
        print(
            f"{n:>7} {online.requests_per_s:>8.1f} {speed_o:>9.2f} {speed_o / n:>9.0%} "
            f"{tasks:>8.2f} {speed_t:>9.2f} {speed_t / n:>9.0%}"
        )
    latency = rows[0][3]
    if latency is not None:
        local, remote = latency
        print(
            f"\nadded latency through Redis (c=1, no compute): local p50 {local.p50_ms:.2f} ms "
            f"p99 {local.p99_ms:.2f} ms; through a worker p50 {remote.p50_ms:.2f} ms p99 "
            f"{remote.p99_ms:.2f} ms; added p50 {remote.p50_ms - local.p50_ms:+.2f} ms"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    results["rows"] = [
        {"workers": n, "online_rps": o.requests_per_s, "online_p50_ms": o.p50_ms,
         "online_p99_ms": o.p99_ms, "tasks_per_s": t}
        for n, o, t, _ in rows
    ]  # fmt: skip
    path = out / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
