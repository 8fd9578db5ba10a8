"""Tasks across workers: records in a real PostgreSQL, files in S3 (moto's server), work
through Redis, containers on the real Docker engine; workers killed with ``kill -9`` at
random while they run tasks. Every task must finish exactly once, with the right output."""

from __future__ import annotations

import io
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.builders import write_model
from support.cluster_fixtures import RedisServer, StartWorker, WorkerProcess, wait_until
from support.s3_fixtures import BUCKET, S3
from support.task_fixtures import submit_ok, wait_for

pytestmark = pytest.mark.timeout(300)

# Squares the number in /input/n, slowly enough to be killed in the middle.
SQUARE = """\
runtime: container
container:
  image: {image}
  command: [sh, -c, "n=$(cat /input/n); sleep 2; echo $((n * n)) > /output/square"]
"""
TASKS = 9
KILLS = 3


def task_gateway(
    server_factory: Any, redis_server: RedisServer, repo: Path, shared: dict[str, str]
) -> Any:
    """``modelport serve --broker`` running no tasks itself (the workers do)."""
    return server_factory(
        repo=repo, args=["--broker", redis_server.url],
        env={**shared, "MODELPORT_TASK_SLOTS": "0",
             "MODELPORT_DATA_DIR": str(repo.parent / "gateway-data")},
    )  # fmt: skip


def one_host_stores(folder: Path) -> dict[str, str]:
    """Task records and files shared by processes of one host: SQLite and a folder."""
    return {"MODELPORT_TASK_STORE": f"sqlite:///{folder / 'tasks.db'}",
            "MODELPORT_TASK_FILES": str(folder / "files")}  # fmt: skip


def output_square(url: str, task_id: str) -> int:
    got = httpx.get(f"{url}/api/tasks/{task_id}/output", timeout=30)
    assert got.status_code == 200, got.text
    with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
        return int(archive.read("square").decode().strip())


def test_n_tasks_on_3_workers_killed_at_random_all_finish_once(
    postgres_url: str,
    s3: S3,
    docker_image: str,
    tmp_path: Path,
    redis_server: RedisServer,
    worker_factory: StartWorker,
    server_factory: Any,
) -> None:
    # (Fixtures in this order: the workers stop before the database and bucket go.)
    repo = tmp_path / "worker-repo"
    write_model(repo, "square", SQUARE.format(image=docker_image), {"1/info.txt": "v1"})
    (tmp_path / "gateway-repo").mkdir()
    files = f"s3://{BUCKET}/tasks-{tmp_path.name}"
    shared = {**s3.env(), "MODELPORT_TASK_STORE": postgres_url, "MODELPORT_TASK_FILES": files,
              "MODELPORT_TASK_VISIBILITY_SECONDS": "3"}  # fmt: skip
    workers: list[WorkerProcess] = [worker_factory(repo, f"w{i}", env=shared) for i in range(3)]
    # The gateway runs no tasks itself and has no copy of the model: it learns of it from
    # the workers' heartbeats.
    gateway = task_gateway(server_factory, redis_server, tmp_path / "gateway-repo", shared)

    try:
        check_all_finish_once(gateway.url, redis_server, worker_factory, workers, repo,
                              shared, s3, files)  # fmt: skip
    finally:
        gateway.stop()  # before the database it uses is dropped


def check_all_finish_once(
    url: str, redis_server: RedisServer, worker_factory: StartWorker,
    workers: list[WorkerProcess], repo: Path, shared: dict[str, str], s3: S3, files: str,
) -> None:  # fmt: skip
    def submitted() -> list[str] | None:
        listed = httpx.get(f"{url}/api/workers", timeout=10).json()["workers"]
        if not any("square" in w["task_models"] for w in listed):
            return None
        return [submit_ok(url, "square", {"n": str(n).encode()}) for n in range(TASKS)]

    ids = wait_until(submitted, 20, "workers advertising the square model")
    rng = random.Random(7)
    for round_ in range(KILLS):
        # Wait until some worker runs a task, then kill -9 it and start a new one.
        def busy() -> list[dict[str, Any]]:
            listed = httpx.get(f"{url}/api/workers", timeout=10).json()["workers"]
            alive = {w.worker_id for w in workers}  # a killed one is listed until it expires
            return [w for w in listed if w["running"] and w["id"] in alive]

        victim_info = rng.choice(wait_until(busy, 60, "a worker running a task"))
        victim = next(w for w in workers if w.worker_id == victim_info["id"])
        time.sleep(rng.uniform(0.2, 1.2))
        victim.kill()
        workers.remove(victim)
        workers.append(worker_factory(repo, f"r{round_}", env=shared))

    records = [wait_for(url, task_id, {"succeeded", "failed", "cancelled"}, 120)
               for task_id in ids]  # fmt: skip
    assert [r["status"] for r in records] == ["succeeded"] * TASKS, records
    for n, task_id in enumerate(ids):
        assert output_square(url, task_id) == n * n
    # Tasks running on a killed worker were run again by another, as a new attempt; each
    # kill (one slot a worker) adds at most one attempt, and nothing else ran twice.
    attempts = [r["attempts"] for r in records]
    assert max(attempts) >= 2 and sum(attempts) <= TASKS + KILLS, records
    # Exactly once: one output file per task in the bucket, and nothing left queued.
    outputs = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=files.split("/", 3)[3])  # type: ignore[attr-defined]
    keys = [o["Key"] for o in outputs.get("Contents", []) if o["Key"].endswith("output.zip")]
    assert len(keys) == TASKS and len(set(keys)) == TASKS
    pending = redis_server.client().xpending("modelport:tasks:square", "workers")
    assert pending["pending"] == 0


def test_tasks_survive_redis_losing_its_data(
    docker_image: str,
    tmp_path: Path,
    redis_server: RedisServer,
    worker_factory: StartWorker,
    server_factory: Any,
) -> None:
    """Tasks submitted while no worker runs, then Redis loses everything (a restart
    without its append-only file): the store is the record, and the server queues them
    again, so a worker started later runs them all."""
    repo = tmp_path / "repo"
    write_model(repo, "square", SQUARE.format(image=docker_image), {"1/info.txt": "v1"})
    shared = one_host_stores(tmp_path)
    # The server knows the model from its own repository, and runs no tasks itself.
    gateway = task_gateway(server_factory, redis_server, repo, shared)
    try:
        ids = [submit_ok(gateway.url, "square", {"n": str(n).encode()}) for n in range(3)]
        client = redis_server.client()
        assert client.xlen("modelport:tasks:square") == 3
        client.flushall()
        worker_factory(repo, "late", env=shared)
        records = [wait_for(gateway.url, t, {"succeeded", "failed"}, 60) for t in ids]
        assert [r["status"] for r in records] == ["succeeded"] * 3, records
        assert [output_square(gateway.url, t) for t in ids] == [0, 1, 4]
    finally:
        gateway.stop()


def test_a_worker_takes_tasks_again_after_redis_comes_back(
    docker_image: str,
    tmp_path: Path,
    redis_server: RedisServer,
    worker_factory: StartWorker,
    server_factory: Any,
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "square", SQUARE.format(image=docker_image), {"1/info.txt": "v1"})
    shared = one_host_stores(tmp_path)
    worker = worker_factory(repo, "w1", env=shared)
    gateway = task_gateway(server_factory, redis_server, repo, shared)
    try:
        redis_server.stop()
        time.sleep(3)  # the worker's claims fail meanwhile; it must neither die nor spin
        assert worker.process.poll() is None, worker.log()
        redis_server.start()
        task_id = submit_ok(gateway.url, "square", {"n": b"7"})
        record = wait_for(gateway.url, task_id, {"succeeded", "failed"}, 60)
        assert record["status"] == "succeeded", record
        assert output_square(gateway.url, task_id) == 49
        assert worker.log().count("waiting for it to take tasks") == 1  # said once, not per try
    finally:
        gateway.stop()
