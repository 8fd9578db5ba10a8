"""Deadlines over the wire, against a real ``modelport serve``: HTTP's ``Request-Timeout``
header (504 with a v2 error body), the v2 ``timeout`` parameter as tritonclient sends it
(HTTP and gRPC, with ``priority``), and gRPC's own deadline (DEADLINE_EXCEEDED), each on
the test repository's ``slow`` model (one request at a time, 150 ms each) while another
request occupies it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.cluster_fixtures import free_port

pytestmark = pytest.mark.timeout(120)

BODY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}


@dataclass
class Served:
    http: str
    grpc: str


@pytest.fixture(scope="module")
def served(server_factory: Any) -> Served:
    grpc_port = free_port()
    server = server_factory(grpc_port=grpc_port)
    return Served(server.url, f"127.0.0.1:{grpc_port}")


@pytest.fixture
def occupied(served: Served) -> Iterator[None]:
    """``slow`` kept busy for the whole test by two clients (one runs while the other
    waits, so the model is never idle: each request takes 150 ms)."""
    stop, answered = threading.Event(), threading.Event()

    def keep_busy() -> None:
        with httpx.Client(base_url=served.http, timeout=10) as client:
            while not stop.is_set():
                client.post("/v2/models/slow/infer", json=BODY)
                answered.set()

    workers = [threading.Thread(target=keep_busy, daemon=True) for _ in range(2)]
    for worker in workers:
        worker.start()
    assert answered.wait(10)
    yield
    stop.set()
    for worker in workers:
        worker.join(10)


def _inputs(module: Any) -> list[Any]:
    tensor = module.InferInput("INPUT0", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2]], dtype=np.float32))
    return [tensor]


def test_request_timeout_header_is_a_504_when_the_queue_is_too_slow(
    served: Served, occupied: None
) -> None:
    answer = httpx.post(
        f"{served.http}/v2/models/slow/infer", json=BODY, headers={"Request-Timeout": "0.02"}
    )
    assert answer.status_code == 504, answer.text
    assert "past its deadline" in answer.json()["error"]
    bad = httpx.post(
        f"{served.http}/v2/models/slow/infer", json=BODY, headers={"Request-Timeout": "soon"}
    )
    assert bad.status_code == 400 and "Request-Timeout".lower() in bad.json()["error"].lower()
    roomy = httpx.post(
        f"{served.http}/v2/models/slow/infer",
        json=BODY,
        headers={"Request-Timeout": "5"},
        timeout=10,
    )
    assert roomy.status_code == 200


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_timeout_parameter_drops_a_queued_request(
    served: Served, occupied: None, protocol: str
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(served.http[7:] if protocol == "http" else served.grpc)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("slow", _inputs(module), timeout=20_000, priority=1)  # 20 ms
    assert "past its deadline" in str(caught.value)
    if protocol == "grpc":
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    answer = client.infer("slow", _inputs(module), timeout=5_000_000)
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), [[1, 2]])


def test_grpc_deadline_drops_the_request(served: Served, occupied: None) -> None:
    client = grpcclient.InferenceServerClient(served.grpc)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("slow", _inputs(grpcclient), client_timeout=0.03)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    stats = client.get_inference_statistics("slow", as_json=True)
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] != "0"
