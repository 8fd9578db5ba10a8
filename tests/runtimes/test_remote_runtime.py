"""The ``remote`` runtime against real servers.

A second ``modelport serve`` process, with ONNX models built by ``tests/support/builders.py``,
stands in for the remote fleet (Triton, TF Serving's v2 peers, another modelport). A
front process serves ``runtime: remote`` models pointing at it over HTTP and over gRPC,
and Triton's own ``tritonclient.http`` drives the front, as a client of the fleet would.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
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
from tritonclient.utils import InferenceServerException

from modelport.errors import SpecError
from modelport.spec import parse_spec
from support.builders import add_sub_onnx, mlp_onnx, write_model, write_slow_model

pytestmark = pytest.mark.timeout(60)

SILENT_TIMEOUT_S = 0.5
# Long, so that a failure that comes fast cannot have been a timeout.
PATIENT_TIMEOUT_S = 30
FAST_S = 5.0
NO_FILES = {"1/README": "this model runs on a remote server"}
# Remotes must be allowed (model_sources); the test remotes all live on loopback.
LOOPBACK_SOURCES = {"MODELPORT_MODEL_SOURCES": "http://127.0.0.1:*,grpc://127.0.0.1:*"}


@dataclass
class Fleet:
    """The remote (HTTP and gRPC addresses) and the front that serves its models."""

    remote: Any  # conftest.ServerProcess
    http_url: str
    grpc_url: str
    front: Any


def build_remote_repository(root: Path) -> Path:
    add_sub_onnx(
        write_model(root, "add_sub", "runtime: onnx\nmax_batch_size: 8\n") / "1/model.onnx"
    )
    mlp_onnx(
        write_model(root, "mlp", "runtime: onnx\nmax_batch_size: 8\n") / "1/model.onnx",
        sizes=(16, 32, 10),
    )
    write_slow_model(root, "slow", delay_ms=200, max_queue_size=1)
    return root


def remote_model(repo: Path, name: str, url: str, remote: str = "", head: str = "") -> None:
    """A front model: ``head`` (model.yaml fields) plus a ``remote`` section."""
    yaml = textwrap.dedent(head or "max_batch_size: 8\n")
    section = f"  url: {url}\n" + textwrap.indent(textwrap.dedent(remote), "  ")
    write_model(repo, name, f"runtime: remote\n{yaml}remote:\n{section}", NO_FILES)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_remote(server_factory: Any, root: Path) -> Fleet:
    grpc_port = free_port()
    remote = server_factory(repo=build_remote_repository(root), grpc_port=grpc_port)
    return Fleet(remote, remote.url, f"grpc://127.0.0.1:{grpc_port}", None)


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung remote)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def fleet(
    server_factory: Any,
    tmp_path_factory: pytest.TempPathFactory,
    silent_port: int,
) -> Iterator[Fleet]:
    fleet = start_remote(server_factory, tmp_path_factory.mktemp("remote-repo"))
    repo = tmp_path_factory.mktemp("front-repo")
    http, grpc = fleet.http_url, fleet.grpc_url
    remote_model(repo, "add_sub_http", http, "model: add_sub\n")
    remote_model(repo, "add_sub_grpc", grpc, "model: add_sub\n")
    remote_model(repo, "add_sub_tfs", grpc, "model: add_sub\nprotocol: tfserving\n")
    remote_model(
        repo, "wrong_signature", grpc, "model: add_sub\nprotocol: tfserving\nsignature: nope\n"
    )
    remote_model(repo, "mlp", grpc)  # the remote's name defaults to the local one
    remote_model(
        repo,
        "loose",
        http,
        "model: add_sub\n",
        """\
        max_batch_size: 8
        inputs:
          - {name: INPUT0, datatype: FP32, shape: [-1]}
          - {name: INPUT1, datatype: FP32, shape: [-1]}
        """,
    )
    remote_model(repo, "slow", http, "", "max_batch_size: 1\ninstances: {count: 6}\n")
    remote_model(repo, "wrong_name_http", http, "model: no_such_model\n")
    remote_model(repo, "wrong_name_grpc", grpc, "model: no_such_model\n")
    nowhere = free_port()
    remote_model(repo, "nowhere_http", f"http://127.0.0.1:{nowhere}")
    remote_model(repo, "nowhere_grpc", f"grpc://127.0.0.1:{nowhere}")
    silent = f"timeout: {SILENT_TIMEOUT_S}\n"
    remote_model(repo, "silent_http", f"http://127.0.0.1:{silent_port}", silent)
    remote_model(repo, "silent_grpc", f"grpc://127.0.0.1:{silent_port}", silent)
    fleet.front = server_factory(repo=repo, env=LOOPBACK_SOURCES)
    yield fleet
    fleet.front.stop()
    fleet.remote.stop()


def connect(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=20)


@pytest.fixture
def front(fleet: Fleet) -> Iterator[triton.InferenceServerClient]:
    with connect(fleet.front.url) as client:
        yield client


def add_sub(
    client: triton.InferenceServerClient, model: str, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    inputs = []
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")


def error_of(call: Callable[..., Any], *args: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args)
    return caught.value


def index(client: triton.InferenceServerClient) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in client.get_model_repository_index()}


RNG = np.random.default_rng(7)
A = RNG.standard_normal((3, 4)).astype(np.float32)
B = RNG.standard_normal((3, 4)).astype(np.float32)


@pytest.mark.parametrize("model", ["add_sub_http", "add_sub_grpc", "add_sub_tfs"])
def test_results_equal_numpy_and_the_remote(
    fleet: Fleet, front: triton.InferenceServerClient, model: str
) -> None:
    total, difference = add_sub(front, model, A, B)
    np.testing.assert_array_equal(total, A + B)
    np.testing.assert_array_equal(difference, A - B)
    with connect(fleet.remote.url) as remote:
        theirs = add_sub(remote, "add_sub", A, B)
    for mine, its in zip(add_sub(front, model, A, B), theirs, strict=True):
        np.testing.assert_array_equal(mine, its)


def test_mlp_over_grpc_equals_the_remote(fleet: Fleet, front: triton.InferenceServerClient) -> None:
    x = RNG.standard_normal((5, 16)).astype(np.float32)
    answers = []
    for client in (front, connect(fleet.remote.url)):
        tensor = triton.InferInput("INPUT0", [5, 16], "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        answers.append(client.infer("mlp", [tensor]).as_numpy("OUTPUT0"))
    assert answers[0].shape == (5, 10)
    np.testing.assert_array_equal(answers[0], answers[1])


@pytest.mark.parametrize("model", ["add_sub_http", "add_sub_grpc", "add_sub_tfs"])
def test_signature_comes_from_the_remote(
    fleet: Fleet, front: triton.InferenceServerClient, model: str
) -> None:
    ours = front.get_model_metadata(model)
    with connect(fleet.remote.url) as remote:
        theirs = remote.get_model_metadata("add_sub")
    assert ours["name"] == model and ours["platform"] == "remote"
    assert (
        ours["inputs"]
        == theirs["inputs"]
        == [
            {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]},
        ]
    )
    assert ours["outputs"] == theirs["outputs"]


def _stats(client: triton.InferenceServerClient, model: str) -> dict[str, Any]:
    (stats,) = client.get_inference_statistics(model)["model_stats"]
    return dict(stats)


def test_batching_happens_at_the_front(fleet: Fleet) -> None:
    """Concurrent requests merge at the front, and each merged batch is one request to
    the remote: the remote counts as many requests as the front ran batches."""
    with connect(fleet.front.url) as front, connect(fleet.remote.url) as remote:
        front_before, remote_before = _stats(front, "add_sub_grpc"), _stats(remote, "add_sub")

    def client_loop(i: int) -> None:
        a = np.full((1, 4), i, np.float32)
        with connect(fleet.front.url) as client:
            for _ in range(15):
                total, _ = add_sub(client, "add_sub_grpc", a, a)
                np.testing.assert_array_equal(total, a + a)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client_loop, range(16)))

    with connect(fleet.front.url) as front, connect(fleet.remote.url) as remote:
        front_after, remote_after = _stats(front, "add_sub_grpc"), _stats(remote, "add_sub")
    requests = front_after["inference_count"] - front_before["inference_count"]
    batches = front_after["execution_count"] - front_before["execution_count"]
    assert requests == 16 * 15
    assert batches < requests, "no request was batched with another at the front"
    assert max(int(b["batch_size"]) for b in front_after["batch_stats"]) > 1
    remote_calls = (
        remote_after["inference_stats"]["success"]["count"]
        - remote_before["inference_stats"]["success"]["count"]
    )
    assert remote_calls == batches
    assert remote_after["inference_count"] - remote_before["inference_count"] == requests


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_at_the_front_count_the_requests(
    fleet: Fleet, front: triton.InferenceServerClient
) -> None:
    labels = {"model": "add_sub_http", "version": "1"}
    success = {**labels, "outcome": "success"}
    before = _metric(fleet.front.url, "modelport_requests_total", **success)
    rows = _metric(fleet.front.url, "modelport_inferences_total", **labels)
    for _ in range(3):
        add_sub(front, "add_sub_http", A, B)
    assert _metric(fleet.front.url, "modelport_requests_total", **success) == before + 3
    assert _metric(fleet.front.url, "modelport_inferences_total", **labels) == rows + 3 * len(A)


def test_a_request_the_remote_rejects_is_400(
    fleet: Fleet, front: triton.InferenceServerClient
) -> None:
    # 'loose' declares any width; the remote's add_sub takes 4, so only it can refuse.
    narrow = np.ones((1, 3), np.float32)
    error = error_of(add_sub, front, "loose", narrow, narrow)
    assert error.status() == "400"
    assert "rejected the request" in error.message()
    assert fleet.http_url in error.message()


async def test_an_overloaded_remote_is_503_with_retry_after(fleet: Fleet) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    async with httpx.AsyncClient(base_url=fleet.front.url, timeout=20) as client:
        # Six instances at the front send six requests at once; the remote runs one and
        # queues one, and refuses the rest.
        responses = await asyncio.gather(
            *(client.post("/v2/models/slow/infer", json=body) for _ in range(6))
        )
    refused = [r for r in responses if r.status_code == 503]
    assert refused and any(r.status_code == 200 for r in responses)
    for response in refused:
        message = response.json()["error"]
        assert "is overloaded" in message and fleet.http_url in message, message
        assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_remote_that_is_not_up_makes_the_model_unavailable(
    front: triton.InferenceServerClient, scheme: str
) -> None:
    row = index(front)[f"nowhere_{scheme}"]
    assert row["state"] == "UNAVAILABLE"
    assert f"{scheme}://127.0.0.1:" in row["reason"] and "cannot be reached" in row["reason"]
    error = error_of(add_sub, front, f"nowhere_{scheme}", A, B)
    assert error.status() == "503" and "cannot be reached" in error.message()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_wrong_remote_model_name_says_so(
    front: triton.InferenceServerClient, scheme: str
) -> None:
    row = index(front)[f"wrong_name_{scheme}"]
    assert row["state"] == "UNAVAILABLE"
    reason = row["reason"]
    assert "remote model 'no_such_model'" in reason and "not found" in reason, reason
    assert "remote.model" in reason


def test_a_wrong_tfserving_signature_says_so(front: triton.InferenceServerClient) -> None:
    row = index(front)["wrong_signature"]
    assert row["state"] == "UNAVAILABLE"
    assert "no signature 'nope'" in row["reason"] and "remote.signature" in row["reason"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_remote_that_never_answers_times_out(
    front: triton.InferenceServerClient, silent_port: int, scheme: str
) -> None:
    row = index(front)[f"silent_{scheme}"]
    assert row["state"] == "UNAVAILABLE"
    assert f"{scheme}://127.0.0.1:{silent_port}" in row["reason"]
    # gRPC reports a connection that never completes its handshake as UNAVAILABLE,
    # "connection attempt timed out", rather than as DEADLINE_EXCEEDED.
    expected = f"timed out after {SILENT_TIMEOUT_S:g} s" if scheme == "http" else "timed out"
    assert expected in row["reason"], row["reason"]


def test_the_remote_going_away_fails_fast_then_recovers(
    server_factory: Any, tmp_path: Path
) -> None:
    fleet = start_remote(server_factory, tmp_path / "remote")
    repo = tmp_path / "front"
    patient = f"model: add_sub\ntimeout: {PATIENT_TIMEOUT_S}\n"
    remote_model(repo, "over_http", fleet.http_url, patient)
    remote_model(repo, "over_grpc", fleet.grpc_url, patient)
    remote_model(repo, "over_tfs", fleet.grpc_url, patient + "protocol: tfserving\n")
    front_process = server_factory(repo=repo, env=LOOPBACK_SOURCES)
    models = {"over_http": fleet.http_url, "over_grpc": fleet.grpc_url, "over_tfs": fleet.grpc_url}
    try:
        with connect(front_process.url) as front:
            for model in models:
                add_sub(front, model, A, B)  # connections are open and warm

            fleet.remote.process.kill()
            fleet.remote.process.wait()
            for model, url in models.items():
                start = time.monotonic()
                error = error_of(add_sub, front, model, A, B)
                assert time.monotonic() - start < FAST_S, "it waited for a timeout"
                assert error.status() == "503", error
                assert url in error.message() and "cannot be reached" in error.message()

            # The same remote back on the same ports: the front serves again, unreloaded.
            port = int(fleet.http_url.rsplit(":", 1)[1])
            grpc_port = int(fleet.grpc_url.rsplit(":", 1)[1])
            server_factory(repo=tmp_path / "remote", port=port, grpc_port=grpc_port)
            for model in models:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        np.testing.assert_array_equal(add_sub(front, model, A, B)[0], A + B)
                        break
                    except InferenceServerException:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
    finally:
        front_process.stop()


# -- model.yaml -----------------------------------------------------------------------------


def _spec_error(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec("m", textwrap.dedent(text), "models/m/model.yaml")
    return caught.value.message


def test_the_remote_section() -> None:
    spec = parse_spec(
        "m",
        textwrap.dedent(
            """\
            runtime: remote
            remote:
              url: grpc://triton:8001
              model: resnet
              version: 3
              timeout: 2.5
              headers: {authorization: Bearer x}
            """
        ),
        "models/m/model.yaml",
    )
    assert spec.remote is not None
    assert (spec.remote.url, spec.remote.protocol, spec.remote.model) == (
        "grpc://triton:8001",
        "v2",
        "resnet",
    )
    assert (spec.remote.version, spec.remote.timeout) == (3, 2.5)
    assert spec.remote.headers == {"authorization": "Bearer x"}
    defaults = parse_spec("m", "runtime: remote\nremote: {url: 'http://a:8000/'}\n", "f")
    assert defaults.remote is not None
    assert (defaults.remote.url, defaults.remote.model, defaults.remote.timeout) == (
        "http://a:8000",
        "",
        10.0,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runtime: remote\n", "field 'remote': runtime: remote needs a 'remote' section"),
        ("runtime: onnx\nremote: {url: 'http://a:1'}\n", "only a runtime: remote model"),
        ("runtime: remote\nremote: {url: 'ftp://a:1'}\n", "field 'remote.url': expected http://"),
        ("runtime: remote\nremote: {url: 'grpc://a'}\n", "a gRPC url is grpc://host:port"),
        ("runtime: remote\nremote: {url: 'http://a:1', modle: x}\n", "'remote.modle': unknown"),
        ("runtime: remote\nremote: {url: 'http://a:1', timeout: 0}\n", "'remote.timeout'"),
        ("runtime: remote\nremote: {url: 'http://a:1', protocol: soap}\n", "'remote.protocol'"),
        (
            "runtime: remote\nremote: {url: 'http://a:1', protocol: tfserving}\n",
            "protocol: tfserving speaks TF Serving's gRPC API",
        ),
        (
            "runtime: remote\nremote: {url: 'grpc://a:1', signature: x}\n",
            "it needs protocol: tfserving",
        ),
    ],
)
def test_remote_section_errors(text: str, expected: str) -> None:
    message = _spec_error(text)
    assert message.startswith("models/m/model.yaml: ") and expected in message, message
