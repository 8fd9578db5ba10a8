"""The gRPC server itself: health service, message size and concurrency settings,
the port setting, and a clean stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.settings import Settings

pytestmark = pytest.mark.timeout(30)

Status = health_pb2.HealthCheckResponse


def check(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_check_reflects_readiness(grpc_server: Any) -> None:
    target = grpc_server.target
    assert check(target, "") == Status.SERVING
    assert check(target, "inference.GRPCInferenceService") == Status.SERVING
    assert check(target, "add_sub") == Status.SERVING
    assert check(target, "broken") == Status.NOT_SERVING
    with pytest.raises(grpc.RpcError) as caught:
        check(target, "no_such_model")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_follows_a_model(own_grpc_server: Any) -> None:
    target = own_grpc_server.target
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="mlp"), timeout=15)
        assert next(watch).status == Status.SERVING
        with triton.InferenceServerClient(target) as client:
            client.unload_model("mlp")
            assert next(watch).status == Status.NOT_SERVING
            assert check(target, "mlp") == Status.NOT_SERVING
            client.load_model("mlp")
            assert next(watch).status == Status.SERVING
        watch.cancel()
        unknown = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert next(unknown).status == Status.SERVICE_UNKNOWN
        unknown.cancel()


def slow_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    return request


def test_message_size_and_concurrency_limits(grpc_server_factory: Any) -> None:
    limit = 64 * 1024
    server = grpc_server_factory(
        env={
            "MODELPORT_GRPC_MAX_MESSAGE_BYTES": str(limit),
            "MODELPORT_GRPC_MAX_CONCURRENT_RPCS": "1",
        }
    )
    with triton.InferenceServerClient(server.target) as client:
        small = np.zeros((1, limit // 2), np.uint8)
        item = triton.InferInput("INPUT0", list(small.shape), "UINT8")
        item.set_data_from_numpy(small)
        assert client.infer("identity_uint8", [item]).as_numpy("OUTPUT0").shape == small.shape

        big = np.zeros((1, limit * 2), np.uint8)
        item = triton.InferInput("INPUT0", list(big.shape), "UINT8")
        item.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("identity_uint8", [item])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert client.is_server_live()

    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # The slow model holds a call for 150 ms; with one call allowed, the rest of a
        # burst is turned away by the server before it reaches the model.
        calls = [stub.ModelInfer.future(slow_request(), timeout=10) for _ in range(4)]
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    assert grpc.StatusCode.OK in codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert server.process.stop() == 0


def test_grpc_settings_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "modelport.toml"
    toml.write_text("[server]\ngrpc_port = 9001\ngrpc_max_message_bytes = 2048\n")
    settings = Settings.load(environ={}, config=toml)
    assert (settings.grpc_port, settings.grpc_max_message_bytes) == (9001, 2048)
    assert settings.grpc_max_concurrent_rpcs == 0
    settings = Settings.load(environ={"MODELPORT_GRPC_PORT": "9002"}, config=toml)
    assert settings.grpc_port == 9002
    settings = Settings.load(
        flags={"grpc_port": 0}, environ={"MODELPORT_GRPC_PORT": "9002"}, config=toml
    )
    assert settings.grpc_port == 0  # off
    assert Settings().grpc_port == 8001


def run_serve(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelport", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_busy_grpc_port_is_a_clear_error(repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            http_port = free.getsockname()[1]
        start = time.monotonic()
        done = run_serve([str(repository), "--port", str(http_port), "--grpc-port", str(port)])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in done.stderr
    assert "--grpc-port" in done.stderr
    assert time.monotonic() - start < 15


def test_grpc_port_zero_turns_grpc_off(shared_server: Any, grpc_server: Any) -> None:
    """The HTTP-only servers of other tests run with --grpc-port 0."""
    assert "gRPC listening on" not in shared_server.log()
    assert f"gRPC listening on {grpc_server.target}" in grpc_server.process.log()


def test_help_lists_the_grpc_port() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "--grpc-port" in done.stdout
