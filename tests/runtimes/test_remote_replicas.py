"""A ``remote`` model with replicas (``remote.urls``), against real servers.

Two ``modelport serve`` processes serve the same ONNX ``add_sub`` and stand in for a
Triton fleet's replicas; a front process serves ``runtime: remote`` models over both,
by HTTP and by gRPC, with no load balancer in between. One replica is killed while
clients send requests: the front fails over, ejects it, and no client sees an error;
started again on its ports, it passes its health check and takes requests again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from modelport.errors import SpecError
from modelport.redaction import REDACTED
from modelport.spec import parse_spec
from support.builders import add_sub_onnx, write_model

pytestmark = pytest.mark.timeout(120)

LOOPBACK_SOURCES = {"MODELPORT_MODEL_SOURCES": "http://127.0.0.1:*,grpc://127.0.0.1:*"}
WAIT_S = 30.0
A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.ones((2, 4), np.float32)
PASSWORD = "replica-pass-7"
TOKEN = "replica-bearer-token"


@dataclass
class Replicas:
    """The two replica servers, the front, and how to start a replica again."""

    processes: list[Any]  # conftest.ServerProcess
    http: list[str]
    grpc: list[str]
    front: Any
    restart: Callable[[int], Any]


def replica_repository(root: Path) -> Path:
    add_sub_onnx(
        write_model(root, "add_sub", "runtime: onnx\nmax_batch_size: 8\n") / "1/model.onnx"
    )
    return root


def front_model(repo: Path, name: str, urls: list[str], extra: str = "") -> None:
    listed = "".join(f"    - {url}\n" for url in urls)
    write_model(
        repo,
        name,
        "runtime: remote\nmax_batch_size: 8\ninstances: {count: 2}\n"
        f"remote:\n  model: add_sub\n  timeout: 20\n  health: {{interval: 0.2, eject_after: 2}}\n"
        f"{extra}  urls:\n{listed}",
        {"1/README": "runs on the replicas"},
    )


@pytest.fixture(scope="module")
def replicas(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = replica_repository(tmp_path_factory.mktemp("replica-repo"))
    ports = [(free_port(), free_port()) for _ in range(2)]

    def start(i: int) -> Any:
        http, grpc = ports[i]
        return server_factory(repo=root, port=http, grpc_port=grpc)

    processes = [start(0), start(1)]
    http = [p.url for p in processes]
    grpc = [f"grpc://127.0.0.1:{g}" for _, g in ports]
    repo = tmp_path_factory.mktemp("replica-front")
    front_model(repo, "over_http", http)
    front_model(repo, "over_grpc", grpc)
    secret = [u.replace("http://", f"http://bob:{PASSWORD}@") for u in http]
    front_model(repo, "secret", secret, f"  headers: {{authorization: Bearer {TOKEN}}}\n")
    front = server_factory(repo=repo, env=LOOPBACK_SOURCES)
    yield Replicas(processes, http, grpc, front, start)
    front.stop()
    for process in processes:
        process.stop()


def add_sub(client: triton.InferenceServerClient, model: str) -> np.ndarray:
    inputs = []
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result: np.ndarray = client.infer(model, inputs).as_numpy("OUTPUT0")
    return result


def connect(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)


def served(url: str) -> int:
    """Rows the replica at ``url`` has inferred with add_sub."""
    with connect(url) as client:
        (stats,) = client.get_inference_statistics("add_sub")["model_stats"]
        return int(stats["inference_count"])


def metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S} s for {what}")
        time.sleep(0.05)


def replica_up(front: str, model: str, target: str) -> float | None:
    return metric(front, "modelport_remote_replica_up", model=model, version="1", target=target)


def wait_for_replica(front: str, model: str, target: str, *, up: bool) -> None:
    state = "back in" if up else "ejected from"
    wait_for(f"{target} {state} {model}", lambda: replica_up(front, model, target) == float(up))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_requests_spread_over_the_replicas(replicas: Replicas) -> None:
    before = [served(url) for url in replicas.http]
    with connect(replicas.front.url) as front:
        for _ in range(20):
            for model in ("over_http", "over_grpc"):
                np.testing.assert_array_equal(add_sub(front, model), A + B)
    gained = [served(url) - b for url, b in zip(replicas.http, before, strict=True)]
    # One request at a time: each replica is as idle as the other, and the one picked
    # longest ago goes first, so they alternate.
    assert gained == [20 * len(A), 20 * len(A)], gained


def test_a_killed_replica_is_ejected_and_no_request_fails(replicas: Replicas) -> None:
    """The kill lands while requests are in flight; every request is answered (by
    failover before the ejection, by the other replica after it). Started again on the
    same ports, the replica passes its health check and takes requests again."""
    front_url = replicas.front.url
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client_loop(model: str) -> None:
        with connect(front_url) as client:
            while not stop.is_set():
                try:
                    np.testing.assert_array_equal(add_sub(client, model), A + B)
                    answered[0] += 1
                except Exception as exc:  # every failure is kept, and fails the test
                    failures.append(f"{model}: {exc}")

    models = ["over_http", "over_grpc"] * 3
    with ThreadPoolExecutor(len(models)) as pool:
        running = [pool.submit(client_loop, m) for m in models]
        wait_for("requests to flow", lambda: answered[0] > 60)
        replicas.processes[0].process.kill()
        replicas.processes[0].process.wait()
        for model, target in (("over_http", replicas.http[0]), ("over_grpc", replicas.grpc[0])):
            wait_for_replica(front_url, model, target, up=False)
        after_ejection = answered[0]
        wait_for("requests after the ejection", lambda: answered[0] > after_ejection + 100)
        stop.set()
        for done in running:
            done.result()
    assert not failures, failures[:5]
    ejections = metric(
        front_url, "modelport_remote_replica_ejections_total", model="over_http",
        target=replicas.http[0],
    )  # fmt: skip
    assert ejections == 1
    survivor = replica_up(front_url, "over_http", replicas.http[1])
    assert survivor == 1

    # Back on its ports: its health check passes and it serves again.
    replicas.processes[0] = replicas.restart(0)
    for model, target in (("over_http", replicas.http[0]), ("over_grpc", replicas.grpc[0])):
        wait_for_replica(front_url, model, target, up=True)
    assert served(replicas.http[0]) == 0  # a fresh process
    with connect(front_url) as front:
        for _ in range(10):
            np.testing.assert_array_equal(add_sub(front, "over_http"), A + B)
            np.testing.assert_array_equal(add_sub(front, "over_grpc"), A + B)
    assert served(replicas.http[0]) > 0


def test_replica_secrets_are_never_shown(replicas: Replicas) -> None:
    front = replicas.front
    with connect(front.url) as client:
        np.testing.assert_array_equal(add_sub(client, "secret"), A + B)
    seen = []
    with httpx.Client(base_url=front.url, timeout=10) as client:
        config = client.get("/v2/models/secret/config")
        assert config.status_code == 200 and REDACTED in config.text, config.text
        seen.append(config.text)
        seen.append(client.get("/api/models/secret").text)
        served_config = client.get("/api/v1/config").json()
        (model,) = [m for m in served_config["models"] if m["name"] == "secret"]
        assert model["remote"]["urls"] == replicas.http  # where, without who
        seen.append(str(served_config))
        metrics = client.get("/metrics").text
        assert f'target="http://{REDACTED}@127.0.0.1' in metrics
        seen.append(metrics)
    seen.append(front.log())
    for text in seen:
        assert PASSWORD not in text and TOKEN not in text


def test_the_urls_section() -> None:
    spec = parse_spec(
        "m",
        "runtime: remote\nremote:\n  urls: [http://a:1/, http://b:2]\n  health: {interval: 1}\n",
        "models/m/model.yaml",
    )
    assert spec.remote is not None
    assert spec.remote.replicas == ("http://a:1", "http://b:2")
    assert (spec.remote.health.interval, spec.remote.health.eject_after) == (1.0, 3)
    for text, expected in [
        ("remote: {url: 'http://a:1', urls: ['http://b:1']}", "not both"),
        ("remote: {urls: ['http://a:1', 'http://a:1']}", "named twice"),
        ("remote: {model: m}", "give 'url' (one remote) or 'urls' (its replicas)"),
        ("remote: {url: 'http://a:1', health: {interval: 1}}", "give them as 'urls'"),
        ("remote: {urls: ['ftp://u:pw@a:1']}", "expected http://"),
    ]:
        with pytest.raises(SpecError) as caught:
            parse_spec("m", f"runtime: remote\n{text}\n", "models/m/model.yaml")
        assert expected in caught.value.message and "pw@" not in caught.value.message
