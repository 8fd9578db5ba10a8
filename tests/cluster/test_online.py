"""Online requests through Redis: a gateway (``modelport serve --broker``) answers for
models that only ``modelport worker`` processes host, with real Redis, real workers and
real clients; workers killed with ``kill -9``; Redis stopped and started again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from support.builders import write_model
from support.cluster_fixtures import RedisServer, StartWorker, wait_until

pytestmark = pytest.mark.timeout(120)

SCALE_YAML = """\
runtime: python
max_batch_size: 16
instances: {count: 2}
inputs: [{name: x, datatype: FP32, shape: [4]}]
outputs:
  - {name: y, datatype: FP32, shape: [4]}
  - {name: pid, datatype: INT64, shape: [1]}
parameters: {delay_ms: %d}
"""
SCALE_PY = """\
import os
import time

import numpy as np


class Model:
    def setup(self, context):
        self.delay = context.spec.parameters.get("delay_ms", 0) / 1000

    def predict(self, inputs):
        time.sleep(self.delay)
        x = inputs["x"]
        return {"y": x * 2, "pid": np.full((len(x), 1), os.getpid(), dtype=np.int64)}
"""
LOCAL_YAML = """\
runtime: fake
inputs: [{name: INPUT0, datatype: FP32, shape: [2]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [2]}]
"""


def scale_repository(root: Path, delay_ms: int = 0) -> Path:
    write_model(root, "scale", SCALE_YAML % delay_ms, {"1/model.py": SCALE_PY})
    return root


def gateway_repository(root: Path) -> Path:
    write_model(root, "local", LOCAL_YAML, {"1/README": "the fake runtime needs no files"})
    return root


def start_gateway(server_factory: Any, redis_server: RedisServer, tmp_path: Path) -> Any:
    return server_factory(
        repo=gateway_repository(tmp_path / "gateway-repo"),
        args=["--broker", redis_server.url],
        env={"MODELPORT_DATA_DIR": str(tmp_path / "gateway-data")},
    )


def wait_routed(url: str, model: str = "scale", timeout: float = 20) -> None:
    def ready() -> bool:
        return httpx.get(f"{url}/v2/models/{model}/ready", timeout=5).status_code == 200

    wait_until(ready, timeout, f"the gateway routing {model}")


def infer_scale(url: str, x: np.ndarray, timeout: float = 30) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/scale/infer", json=body, timeout=timeout)


def output(response: httpx.Response, name: str) -> np.ndarray:
    for out in response.json()["outputs"]:
        if out["name"] == name:
            return np.array(out["data"]).reshape(out["shape"])
    raise AssertionError(f"no output {name} in {response.text}")


def test_a_gateway_serves_a_model_only_a_worker_hosts(
    tmp_path: Path, redis_server: RedisServer, worker_factory: StartWorker, server_factory: Any
) -> None:
    worker = worker_factory(scale_repository(tmp_path / "worker-repo"), "w1")
    gateway = start_gateway(server_factory, redis_server, tmp_path)
    wait_routed(gateway.url)

    client = triton.InferenceServerClient(gateway.url.removeprefix("http://"))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for binary in (True, False):
        tensor = triton.InferInput("x", [3, 4], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("scale", [tensor])
        np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
        # Computed in the worker's process, not the gateway's.
        assert set(result.as_numpy("pid").ravel()) == {worker.process.pid}
    meta = client.get_model_metadata("scale")
    assert [i["name"] for i in meta["inputs"]] == ["x"]
    assert meta["inputs"][0]["shape"] == [-1, 4]
    assert meta["platform"] == "python"  # the worker's platform, not "cluster"
    # The web page's list and card show the same platform (they used to show "cluster").
    page = httpx.get(f"{gateway.url}/api/models/scale", timeout=10).json()
    assert (page["runtime"], page["platform"]) == ("cluster", "python")
    assert httpx.get(f"{gateway.url}/v2/models/scale/config", timeout=10).json()["platform"] == (
        "python"
    )
    # The gateway's own model is served locally as before.
    local = httpx.post(f"{gateway.url}/v2/models/local/infer", timeout=10, json={
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1, 2]}]
    })  # fmt: skip
    assert local.status_code == 200, local.text
    # A wrong shape is refused with the worker's reason, as a local model's would be.
    bad = infer_scale(gateway.url, np.zeros((1, 3), dtype=np.float32))
    assert bad.status_code == 400 and "x" in bad.json()["error"], bad.text

    listed = httpx.get(f"{gateway.url}/api/workers", timeout=10).json()
    assert listed["broker"] == "redis"
    by_id = {w["id"]: w for w in listed["workers"]}
    assert by_id["w1"]["role"] == "worker"
    assert [m["name"] for m in by_id["w1"]["models"]] == ["scale"]
    assert by_id["w1"]["pid"] == worker.process.pid
    printed = subprocess.run(
        [sys.executable, "-m", "modelport", "workers", "--url", gateway.url],
        capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "w1" in printed.stdout and "scale" in printed.stdout


def test_workers_hosting_one_model_share_its_requests(
    tmp_path: Path, redis_server: RedisServer, worker_factory: StartWorker, server_factory: Any
) -> None:
    repo = scale_repository(tmp_path / "worker-repo", delay_ms=50)
    first, second = worker_factory(repo, "w1"), worker_factory(repo, "w2")
    gateway = start_gateway(server_factory, redis_server, tmp_path)
    wait_routed(gateway.url)
    x = np.ones((1, 4), dtype=np.float32)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: infer_scale(gateway.url, x), range(64)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    pids = {int(output(r, "pid").ravel()[0]) for r in responses}
    assert pids == {first.process.pid, second.process.pid}


def test_a_killed_worker_never_leaves_a_request_hanging(
    tmp_path: Path, redis_server: RedisServer, worker_factory: StartWorker, server_factory: Any
) -> None:
    repo = scale_repository(tmp_path / "worker-repo", delay_ms=400)
    doomed, survivor = worker_factory(repo, "w1"), worker_factory(repo, "w2")
    gateway = start_gateway(server_factory, redis_server, tmp_path)
    wait_routed(gateway.url)
    x = np.ones((1, 4), dtype=np.float32)
    with ThreadPoolExecutor(12) as pool:
        pending = [pool.submit(infer_scale, gateway.url, x, 25.0) for _ in range(24)]
        time.sleep(0.6)  # both workers are holding requests now
        doomed.kill()
        responses = [f.result() for f in pending]  # a hang would fail on the 25 s timeout
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [r.text for r in responses]
    # What the dead worker held was retried once by the survivor.
    assert codes.count(200) == len(codes), [r.text for r in responses if r.status_code != 200]
    assert survivor.process.pid in {int(output(r, "pid").ravel()[0]) for r in responses}

    # With no worker left, requests fail fast instead of waiting for the timeout.
    survivor.kill()
    began = time.monotonic()
    failed = infer_scale(gateway.url, x, 25.0)
    assert failed.status_code in (503, 404), failed.text
    assert time.monotonic() - began < 15


def test_redis_away_and_back(
    tmp_path: Path, redis_server: RedisServer, worker_factory: StartWorker, server_factory: Any
) -> None:
    worker_factory(scale_repository(tmp_path / "worker-repo"), "w1")
    gateway = start_gateway(server_factory, redis_server, tmp_path)
    wait_routed(gateway.url)
    x = np.ones((2, 4), dtype=np.float32)
    assert infer_scale(gateway.url, x).status_code == 200

    redis_server.stop()
    local_body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2],
                              "data": [1, 2]}]}  # fmt: skip
    for _ in range(5):  # the gateway keeps serving its own model while Redis is away
        local = httpx.post(f"{gateway.url}/v2/models/local/infer", json=local_body, timeout=10)
        assert local.status_code == 200, local.text
    began = time.monotonic()
    away = infer_scale(gateway.url, x, 25.0)
    assert away.status_code == 503 and "Redis" in away.json()["error"], away.text
    assert time.monotonic() - began < 15
    assert httpx.get(f"{gateway.url}/v2/health/live", timeout=5).status_code == 200

    redis_server.start()  # same port, same append-only file
    wait_until(lambda: infer_scale(gateway.url, x, 25.0).status_code == 200, 30,
               "requests through Redis after its restart")  # fmt: skip
    again = infer_scale(gateway.url, x)
    np.testing.assert_array_equal(output(again, "y"), x * 2)
