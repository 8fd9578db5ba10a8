"""Triton python-backend models (``TritonPythonModel``) served by a real ``modelport
serve`` process, driven by Triton's own clients over HTTP and gRPC: add/sub, BYTES
preprocessing, BLS calling an ONNX model, an error response for one request, and an
exception from execute; concurrent clients make the batcher hand execute several
requests at once."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.triton_python_models import write_triton_python_repository

pytestmark = pytest.mark.timeout(90)

CLIENTS = 8  # concurrent clients
ROUNDS = 3  # requests each client sends, one after the other


@dataclass(frozen=True)
class Served:
    """The server's HTTP and gRPC addresses, and its process (for its log)."""

    http: str
    grpc: str
    process: Any


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(
    server_factory: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server for the module, with gRPC on, serving the Triton python models."""
    repo = write_triton_python_repository(tmp_path_factory.mktemp("triton-python") / "models")
    grpc_port = _free_port()
    process = server_factory(repo=repo, grpc_port=grpc_port)
    yield Served(process.url.removeprefix("http://"), f"127.0.0.1:{grpc_port}", process)
    process.stop()


Client = Any  # tritonclient.http or tritonclient.grpc InferenceServerClient
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(params=["http", "grpc"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _connect(served: Served, protocol: str) -> Client:
    if protocol == "http":
        return httpclient.InferenceServerClient(served.http)
    return grpcclient.InferenceServerClient(served.grpc)


@pytest.fixture
def client(served: Served, protocol: str) -> Iterator[Client]:
    c = _connect(served, protocol)
    yield c
    c.close()


def _input(protocol: str, name: str, array: np.ndarray, datatype: str) -> Any:
    tensor = PROTOCOLS[protocol].InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _add_sub(client: Client, protocol: str, a: np.ndarray, b: np.ndarray) -> Any:
    return client.infer(
        "add_sub", [_input(protocol, "INPUT0", a, "FP32"), _input(protocol, "INPUT1", b, "FP32")]
    )


def _concurrently(work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` for i in 0..CLIENTS-1, each on its own thread, started together;
    the results (or the exceptions raised) in order."""
    results: list[Any] = [None] * CLIENTS
    start = threading.Barrier(CLIENTS)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # handed to the test, which checks it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_add_sub(client: Client, protocol: str) -> None:
    a = np.array([[1.5, 2.0, -3.25, 4.0], [0.0, 10.0, 20.0, 30.0]], np.float32)
    b = np.array([[0.5, 1.0, 1.25, -4.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    result = _add_sub(client, protocol, a, b)
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.float32


def test_concurrent_clients_are_gathered_into_one_execute(served: Served, protocol: str) -> None:
    def work(i: int) -> list[int]:
        gathered = []
        with _connect(served, protocol) as c:
            for r in range(ROUNDS):
                a = np.full((1, 4), i * 10 + r, np.float32)
                result = _add_sub(c, protocol, a, np.ones_like(a))
                assert np.array_equal(result.as_numpy("OUTPUT0"), a + 1)
                assert np.array_equal(result.as_numpy("OUTPUT1"), a - 1)
                gathered.append(int(result.as_numpy("GATHERED")[0, 0]))
        return gathered

    results = _concurrently(work)
    for r in results:
        assert isinstance(r, list), r
    # Each request got its own answer, and execute was handed several requests at once.
    assert max(g for r in results for g in r) > 1


def test_bytes_preprocessing(client: Client, protocol: str) -> None:
    texts = np.array([[b"1.5, 2, 3"], ["grüße".encode()]], dtype=np.object_)
    result = client.infer("preprocess", [_input(protocol, "TEXT", texts, "BYTES")])
    assert result.as_numpy("UPPER").tolist() == [[b"1.5, 2, 3"], ["GRÜSSE".encode()]]
    sums = result.as_numpy("SUM")
    assert sums[0, 0] == np.float32(6.5)
    assert np.isnan(sums[1, 0])


@pytest.mark.parametrize("model", ["bls", "bls_async"])
def test_bls_calls_the_onnx_model(client: Client, protocol: str, model: str) -> None:
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    b = np.array([[1, 1, 1, 1], [2, 2, 2, 2]], np.float32)
    result = client.infer(
        model, [_input(protocol, "A", a, "FP32"), _input(protocol, "B", b, "FP32")]
    )
    assert np.array_equal(result.as_numpy("PRODUCT"), a * a - b * b)


def _status(error: InferenceServerException) -> str:
    return str(error.status())


def test_an_error_response_fails_only_its_request(served: Served, protocol: str) -> None:
    values = [-5 if i == 3 else i for i in range(CLIENTS)]

    def work(i: int) -> Any:
        with _connect(served, protocol) as c:
            x = np.array([[values[i]]], np.int32)
            return c.infer("picky", [_input(protocol, "INPUT0", x, "INT32")])

    results = _concurrently(work)
    refused = results[3]
    assert isinstance(refused, InferenceServerException)
    assert "negative input -5 refused" in refused.message()
    assert _status(refused) == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    for i, result in enumerate(results):
        if i != 3:
            assert not isinstance(result, Exception), result
            assert result.as_numpy("OUTPUT0").tolist() == [[values[i] * 2]]


def test_an_exception_from_execute_fails_its_requests(client: Client, protocol: str) -> None:
    x = np.array([[1]], np.int32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("raising", [_input(protocol, "INPUT0", x, "INT32")])
    assert "model 'raising' failed: cannot handle 1 request(s) today" in caught.value.message()
    assert _status(caught.value) == ("500" if protocol == "http" else "StatusCode.INTERNAL")
    assert client.is_model_ready("raising")


def test_the_model_logs_through_pb_utils_logger(served: Served) -> None:
    assert "add_sub initialized as add_sub_0_0" in served.process.log()


def test_models_are_served_as_triton_python_models(client: Client) -> None:
    config = client.get_model_config("add_sub")
    if not isinstance(config, dict):  # gRPC: a ModelConfigResponse
        assert config.config.backend == "python"
        assert [i.name for i in config.config.input] == ["INPUT0", "INPUT1"]
        return
    assert config["backend"] == "python"
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]


def test_the_repository_fixture_is_complete(served: Served) -> None:
    with httpclient.InferenceServerClient(served.http) as c:
        names = {m["name"]: m.get("state") for m in c.get_model_repository_index()}
    for name in ("add_sub", "preprocess", "addsub_onnx", "bls", "bls_async", "picky", "raising"):
        assert names.get(name) == "READY", names
