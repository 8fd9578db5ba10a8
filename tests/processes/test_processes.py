"""Several server processes on one port (``modelport serve --processes N``): real
processes, real clients. The kernel spreads connections over the processes; load and
unload reach all of them; /metrics shows all of them, and so do the statistics; tasks
submitted to any process run; a process killed with ``kill -9`` is started again;
SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as triton_grpc

from support.cluster_fixtures import free_port
from support.task_fixtures import submit_ok, wait_for

pytestmark = pytest.mark.timeout(120)

BODY = {"inputs": [
    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
]}  # fmt: skip


def children(pid: int) -> set[int]:
    """The server processes the supervisor ``pid`` started (not multiprocessing's
    resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    servers = set()
    for child in map(int, found.stdout.split()):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            servers.add(child)
    return servers


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def success_by_process(url: str, model: str) -> dict[str, float]:
    text = metrics(url)
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modelport_requests_total{") and f'model="{model}"' in line \
                and 'outcome="success"' in line:  # fmt: skip
            process = line.split('process="')[1].split('"')[0]
            counts[process] = counts.get(process, 0) + float(line.rsplit(" ", 1)[1])
    return counts


@pytest.fixture
def two_processes(server_factory: Any, tmp_path: Path) -> Any:
    grpc_port = free_port()
    server = server_factory(
        grpc_port=grpc_port, args=["--processes", "2"],
        env={"MODELPORT_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    # Ready once one process answers; wait for both: the supervisor prints its banner
    # once every process is ready, and the peers' metrics show both.
    deadline = time.monotonic() + 30
    while "each with every model" not in server.log() or 'process="1"' not in metrics(server.url):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    server.grpc_port = grpc_port
    return server


def test_requests_are_spread_and_metrics_cover_every_process(two_processes: Any) -> None:
    url = two_processes.url
    for _ in range(60):  # a new connection each: the kernel picks a process
        answer = httpx.post(f"{url}/v2/models/add_sub/infer", json=BODY, timeout=10)
        assert answer.status_code == 200, answer.text
    counts = success_by_process(url, "add_sub")
    assert set(counts) == {"0", "1"} and sum(counts.values()) >= 60, counts
    assert all(v > 0 for v in counts.values()), counts
    # gRPC shares its port the same way.
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{two_processes.grpc_port}")
    assert client.is_model_ready("add_sub")


def test_load_and_unload_reach_every_process(two_processes: Any) -> None:
    url = two_processes.url
    gone = httpx.post(f"{url}/v2/repository/models/add_sub/unload", timeout=30)
    assert gone.status_code == 200, gone.text
    for _ in range(30):  # whichever process answers, the model is unloaded there
        assert httpx.get(f"{url}/v2/models/add_sub/ready", timeout=5).status_code != 200
    back = httpx.post(f"{url}/v2/repository/models/add_sub/load", timeout=60)
    assert back.status_code == 200, back.text
    for _ in range(30):
        assert httpx.get(f"{url}/v2/models/add_sub/ready", timeout=5).status_code == 200


def test_a_killed_process_comes_back_and_sigterm_stops_all(two_processes: Any) -> None:
    url, supervisor = two_processes.url, two_processes.process.pid
    first = children(supervisor)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = children(supervisor)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, two_processes.log()
        time.sleep(0.2)
    for _ in range(20):  # served all along by the other, and by the new one once up
        answer = httpx.post(f"{url}/v2/models/add_sub/infer", json=BODY, timeout=10)
        assert answer.status_code == 200, answer.text
    assert "starting it again" in two_processes.log()
    two_processes.stop()
    assert two_processes.process.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in now)


def test_a_process_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", "--processes", "2", "--port",
         str(free_port()), "--grpc-port", "0", "--tls-cert", str(tmp_path / "missing.pem"),
         "--tls-key", str(tmp_path / "missing.key")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "MODELPORT_DATA_DIR": str(tmp_path / "data")},
    )  # fmt: skip
    assert done.returncode != 0
    assert "missing.pem" in done.stdout + done.stderr
    assert time.monotonic() - started < 50


def test_tasks_submitted_to_any_process_run(
    server_factory: Any, task_repository: Path, tmp_path: Path
) -> None:
    server = server_factory(
        repo=task_repository, args=["--processes", "2"],
        env={"MODELPORT_DATA_DIR": str(tmp_path / "data"), "MODELPORT_TASK_SLOTS": "2"},
    )  # fmt: skip
    ids = [submit_ok(server.url, "upper", {"in.txt": f"task {n}".encode()}) for n in range(8)]
    records = [wait_for(server.url, task_id, {"succeeded", "failed"}, 60) for task_id in ids]
    assert [r["status"] for r in records] == ["succeeded"] * 8, records
    assert all(r["attempts"] == 1 for r in records), records


def test_peer_sockets_fit_a_unix_socket_path_however_deep_the_data_dir(tmp_path: Path) -> None:
    from modelport.server.peers import ProcessInfo

    short = ProcessInfo(0, 2, tmp_path / "run")
    assert short.socket_path(1) == tmp_path / "run" / "process-1.sock"
    deep = ProcessInfo(0, 2, tmp_path / ("d" * 120) / "run")
    paths = {deep.socket_path(i) for i in range(2)}
    assert len(paths) == 2 and all(len(str(p)) < 108 for p in paths)
    # Every process computes the same path for a peer.
    assert ProcessInfo(1, 2, deep.run_dir).socket_path(0) == deep.socket_path(0)


def test_statistics_from_any_process_count_every_process(two_processes: Any) -> None:
    """Requests spread over both processes; the statistics extension, asked over HTTP
    (a new connection each: either process answers) and over gRPC, counts all of them,
    as /metrics does."""
    url = two_processes.url

    def http_count() -> int:
        answer = httpx.get(f"{url}/v2/models/add_sub/stats", timeout=10)
        assert answer.status_code == 200, answer.text
        (stats,) = answer.json()["model_stats"]
        return int(stats["inference_stats"]["success"]["count"])

    before = http_count()
    for _ in range(40):
        answer = httpx.post(f"{url}/v2/models/add_sub/infer", json=BODY, timeout=10)
        assert answer.status_code == 200, answer.text
    counts = success_by_process(url, "add_sub")
    assert all(v > 0 for v in counts.values()) and len(counts) == 2, counts
    assert {http_count() for _ in range(10)} == {before + 40}
    for _ in range(4):
        with triton_grpc.InferenceServerClient(f"127.0.0.1:{two_processes.grpc_port}") as client:
            (stats,) = client.get_inference_statistics("add_sub").model_stats
            assert stats.inference_stats.success.count == before + 40
            assert stats.inference_count == before + 40
    everything = httpx.get(f"{url}/v2/models/stats", timeout=10).json()["model_stats"]
    (add_sub,) = [s for s in everything if s["name"] == "add_sub"]
    assert add_sub["inference_stats"]["success"]["count"] == before + 40
    batches = sum(b["compute_infer"]["count"] for b in add_sub["batch_stats"])
    assert batches == add_sub["execution_count"]
