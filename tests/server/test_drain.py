"""Graceful drain: SIGTERM to a real ``modelport serve`` under load.

At once, ``/readyz`` answers 503 and gRPC health NOT_SERVING; new connections are still
answered for ``drain_seconds``; requests in flight when the listeners close finish; the
task that was running goes back to the queue with its attempt not counted; the process
exits 0; and no request of the load failed or went unanswered.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from modelport.tasks.records import TaskStatus
from modelport.tasks.store import TaskStore, sqlite_url
from support.builders import add_sub_onnx, write_model
from support.task_fixtures import SLEEPY, docker_image, submit_ok, task_containers, wait_for

__all__ = ["docker_image"]  # the fixture, imported for the tests below

pytestmark = pytest.mark.timeout(120)

# Long enough for the load to get its answers on a busy machine (the test waits for
# them, not for the clock); the slow requests outlast it, so they are in flight when the
# listeners close.
DRAIN_S = 10
SLOW_MS = 13000
SLOW_REQUESTS = 2
LOAD_THREADS = 3
ANSWERS_WHILE_DRAINING = 3  # per load thread, after /readyz said 503
ADD_SUB = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
}
SLOW = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
Status = health_pb2.HealthCheckResponse


@pytest.fixture
def drain_repository(tmp_path: Path, docker_image: str) -> Path:
    root = tmp_path / "models"
    folder = write_model(root, "add_sub", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    write_model(
        root,
        "slow",
        f"""\
        runtime: fake
        max_batch_size: 0
        instances: {{count: {SLOW_REQUESTS}}}
        inputs: [{{name: INPUT0, datatype: FP32, shape: [2]}}]
        outputs: [{{name: OUTPUT0, datatype: FP32, shape: [2]}}]
        parameters: {{delay_ms: {SLOW_MS}}}
        """,
        {"1/README": "the fake runtime needs no files"},
    )
    write_model(root, "sleepy", SLEEPY.format(image=docker_image), {"1/info.txt": "sleepy"})
    return root


class Load:
    """Threads posting infer requests, each on a new connection, until stopped; every
    outcome is kept, and the answers that came after ``draining`` was set are counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self.while_draining = [0] * LOAD_THREADS
        self.draining = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(LOAD_THREADS)
        ]

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            draining = self.draining.is_set()
            try:
                answer = httpx.post(f"{self.url}/v2/models/add_sub/infer", json=ADD_SUB, timeout=30)
                outcome = str(answer.status_code)
                if answer.status_code == 200:
                    assert answer.json()["outputs"][0]["data"] == [2, 3, 4, 5]
            except Exception as exc:  # kept, and fails the test below
                outcome = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.outcomes[outcome] += 1
                if draining and outcome == "200":
                    self.while_draining[index] += 1

    def enough_while_draining(self) -> bool:
        with self.lock:
            return min(self.while_draining) >= ANSWERS_WHILE_DRAINING


def _post_slow(url: str, outcomes: list[str]) -> None:
    try:
        answer = httpx.post(f"{url}/v2/models/slow/infer", json=SLOW, timeout=60)
        outcomes.append(str(answer.status_code))
    except Exception as exc:
        outcomes.append(f"{type(exc).__name__}: {exc}")


def _busy_instances(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelport_instances_busy" and sample.labels["model"] == model:
                return sample.value
    return 0.0


def _grpc_health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def _until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def test_sigterm_drains_under_load_and_loses_nothing(
    server_factory: Any, drain_repository: Path, tmp_path: Path, free_port: Any
) -> None:
    data = tmp_path / "data"
    grpc_port = free_port()
    env = {
        "MODELPORT_DRAIN_SECONDS": str(DRAIN_S),
        "MODELPORT_DATA_DIR": str(data),
        "MODELPORT_TASK_SLOTS": "1",
    }
    server = server_factory(env=env, repo=drain_repository, grpc_port=grpc_port)
    target = f"127.0.0.1:{grpc_port}"
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert _grpc_health(target) == Status.SERVING

    # A task running in its container, and requests that will still run when the
    # drain is over.
    task_id = submit_ok(server.url, "sleepy", {"seconds": b"120"})
    wait_for(server.url, task_id, {"running"})
    _until(lambda: task_containers(task_id), "the task's container started")
    slow: list[str] = []
    slow_threads = [
        threading.Thread(target=_post_slow, args=(server.url, slow), daemon=True)
        for _ in range(SLOW_REQUESTS)
    ]
    for thread in slow_threads:
        thread.start()
    _until(lambda: _busy_instances(server.url, "slow") == SLOW_REQUESTS, "slow requests running")
    load = Load(server.url)
    for thread in load.threads:
        thread.start()
    _until(lambda: sum(load.outcomes.values()) >= LOAD_THREADS, "the load got answers")

    server.process.send_signal(signal.SIGTERM)
    # Not ready at once, on both protocols, while requests are still answered.
    _until(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, "/readyz 503")
    report = httpx.get(f"{server.url}/readyz").json()
    assert report["failing"] == ["serving"] and report["checks"]["serving"]["draining"]
    assert _grpc_health(target) == Status.NOT_SERVING
    assert httpx.get(f"{server.url}/livez").status_code == 200
    load.draining.set()
    _until(load.enough_while_draining, f"answers while draining ({load.outcomes})")
    assert server.process.poll() is None  # still serving: the drain has not ended
    load.stop.set()
    for thread in load.threads:
        thread.join(30)

    assert server.process.wait(60) == 0, server.log()
    for thread in slow_threads:
        thread.join(30)
    assert slow == ["200"] * SLOW_REQUESTS, server.log()
    assert set(load.outcomes) == {"200"}, load.outcomes
    # The task went back to the queue, its attempt not counted, its container gone.
    store = TaskStore(sqlite_url(data / "tasks.db"))
    try:
        record = store.get(task_id)
    finally:
        store.close()
    assert record is not None
    assert (record.status, record.attempts) == (TaskStatus.QUEUED, 0), record
    assert task_containers(task_id) == []
    assert f"draining for {DRAIN_S} s" in server.log()
