"""The task benchmark: what running a job as a modelport task costs over ``docker run``.
One command, numbers printed, nothing asserted.

    .venv/bin/python bench/tasks.py [--seconds 1] [--repeats 5] [--slots 1,2,4]

The job is the busybox test image running ``sleep S`` and copying its input to
/output. The bare run is ``docker run --rm`` of the same image and command with the
input and output folders bind-mounted, timed from the command to its exit. A task is
the whole trip a client makes: the upload (``POST /api/tasks``, a small zip), the
queue, the container (create, start, wait, remove), the output zip, noticing the end
(polling every 20 ms) and downloading ``/api/tasks/{id}/output``. Its time is split by
the task record's timestamps (created, started, finished) and the client's own clock.

With N slots, N x ``--per-slot`` tasks are submitted at once and timed to the last one
finished: perfect is N tasks per bare task time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from run import HOST, free_port, machine

from support.task_fixtures import import_busybox_image

ROOT = Path(__file__).resolve().parent.parent
READY_S = 60.0
POLL_S = 0.02
TASK_YAML = """\
runtime: container
container:
  image: {image}
  command: [sh, -c, "sleep {seconds}; cp -r /input/. /output/"]
"""


@dataclass(frozen=True)
class TaskTimes:
    """One task's trip, in seconds."""

    total: float  # submit to output downloaded
    upload: float  # the POST
    queued: float  # created -> started (record)
    running: float  # started -> finished (record): container and output zip
    noticed: float  # finished -> the client saw it (polling)
    download: float  # GET output


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def bare_run(image: str, seconds: float) -> float:
    """``docker run --rm`` of the same job, input and output bind-mounted."""
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "input"), Path(folder, "output")
        source.mkdir()
        target.mkdir()
        (source / "data.txt").write_text("hello\n")
        began = time.perf_counter()
        subprocess.run(
            ["docker", "run", "--rm", "-v", f"{source}:/input:ro", "-v", f"{target}:/output",
             image, "sh", "-c", f"sleep {seconds}; cp -r /input/. /output/"],
            check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - began


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def submit(base: str, model: str) -> tuple[str, float]:
    began = time.perf_counter()
    sent = httpx.post(
        f"{base}/api/tasks",
        data={"model": model},
        files=[("files", ("data.zip", _zip({"data.txt": b"hello\n"})))],
        timeout=30,
    )
    sent.raise_for_status()
    return str(sent.json()["id"]), time.perf_counter() - began


def finished(base: str, task_id: str) -> dict[str, str]:
    while True:
        record = httpx.get(f"{base}/api/tasks/{task_id}", timeout=10).json()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            if record["status"] != "succeeded":
                raise RuntimeError(f"task {task_id} {record['status']}: {record}")
            return dict(record)
        time.sleep(POLL_S)


def one_task(base: str, model: str) -> TaskTimes:
    began = time.perf_counter()
    task_id, upload = submit(base, model)
    record = finished(base, task_id)
    seen = time.time()
    fetch = time.perf_counter()
    output = httpx.get(f"{base}/api/tasks/{task_id}/output", timeout=30)
    output.raise_for_status()
    download = time.perf_counter() - fetch
    created, started, ended = (
        _stamp(record[key]) for key in ("created_at", "started_at", "finished_at")
    )
    return TaskTimes(
        total=time.perf_counter() - began,
        upload=upload,
        queued=started - created,
        running=ended - started,
        noticed=max(0.0, seen - ended),
        download=download,
    )


def many_tasks(base: str, model: str, count: int) -> float:
    """Seconds from submitting ``count`` tasks at once to the last one finished."""
    began = time.perf_counter()
    ids = [submit(base, model)[0] for _ in range(count)]
    for task_id in ids:
        finished(base, task_id)
    return time.perf_counter() - began


@contextmanager
def server(root: Path, slots: int) -> Iterator[str]:
    port = free_port()
    base = f"http://{HOST}:{port}"
    log = (root / f"server-{slots}.log").open("wb")
    env = {
        "MODELPORT_DATA_DIR": str(root / f"data-{slots}"),
        "MODELPORT_TASK_SLOTS": str(slots),
        "PATH": "/usr/bin:/bin:/usr/local/bin",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelport", "serve", str(root / "repo"), "--port", str(port),
         "--grpc-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server not ready; see {log.name}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="the job's sleep")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slots", default="1,2,4")
    parser.add_argument("--per-slot", type=int, default=3)
    args = parser.parse_args()
    image = import_busybox_image()
    print(machine())
    print(f"date: {datetime.now().strftime('%Y-%m-%d %H:%M')}; job: sleep {args.seconds} s")
    with tempfile.TemporaryDirectory(prefix="modelport-bench-tasks-") as folder:
        root = Path(folder)
        model = root / "repo" / "job"
        (model / "1").mkdir(parents=True)
        (model / "model.yaml").write_text(TASK_YAML.format(image=image, seconds=args.seconds))
        bare_run(image, 0)  # the first run pays for the image's layers
        bare = [bare_run(image, args.seconds) for _ in range(args.repeats)]
        print(f"\n== one at a time ({args.repeats} runs, medians in ms)")
        print(f"  docker run --rm: {_ms(bare)} (runs: {', '.join(_ms([b]) for b in bare)})")
        with server(root, 1) as base:
            one_task(base, "job")  # warm: the first task creates the task database
            trips = [one_task(base, "job") for _ in range(args.repeats)]
        total = [t.total for t in trips]
        overhead = statistics.median(total) / statistics.median(bare) - 1
        print(f"  task, whole trip: {_ms(total)} ({overhead:+.0%} over docker run)")
        for part in ("upload", "queued", "running", "noticed", "download"):
            print(f"    {part:<9} {_ms([getattr(t, part) for t in trips]):>6}")
        print(f"\n== several slots ({args.per_slot} tasks per slot, submitted at once)")
        print("  slots   tasks   seconds   tasks per bare task time   ideal")
        for slots in (int(s) for s in args.slots.split(",")):
            with server(root, slots) as base:
                one_task(base, "job")
                count = slots * args.per_slot
                took = many_tasks(base, "job", count)
            rate = count / (took / statistics.median(bare))
            print(f"  {slots:>5} {count:>7} {took:>9.2f} {rate:>26.2f} {slots:>7}")


if __name__ == "__main__":
    main()
