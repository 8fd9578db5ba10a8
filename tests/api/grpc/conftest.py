"""gRPC fixtures: real ``modelport serve`` processes with gRPC on a free port.

They start servers through the shared ``server_factory`` (tests/conftest.py), giving
it ``grpc_port``; the HTTP-only servers of other tests keep gRPC off.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as triton


@dataclass
class GrpcServer:
    """A server process (``conftest.ServerProcess``) and its gRPC address."""

    process: Any
    target: str

    @property
    def url(self) -> str:
        return str(self.process.url)


StartGrpcServer = Callable[..., GrpcServer]


def free_grpc_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def grpc_server_factory(server_factory: Any) -> StartGrpcServer:
    """``start(env=..., repo=...)``: a server with gRPC on a free port, ready to serve."""

    def start(env: dict[str, str] | None = None, repo: Path | None = None) -> GrpcServer:
        port = free_grpc_port()
        started = server_factory(env=env, grpc_port=port, repo=repo)
        return GrpcServer(started, f"127.0.0.1:{port}")

    return start


@pytest.fixture(scope="session")
def shared_grpc_server(grpc_server_factory: StartGrpcServer) -> GrpcServer:
    return grpc_server_factory()


@pytest.fixture
def grpc_server(shared_grpc_server: GrpcServer, request: pytest.FixtureRequest) -> GrpcServer:
    """The shared gRPC server; tests using it must leave its models as they were."""
    assert shared_grpc_server.process.process.poll() is None, shared_grpc_server.process.log()
    return shared_grpc_server


@pytest.fixture
def own_grpc_server(grpc_server_factory: StartGrpcServer) -> Iterator[GrpcServer]:
    """A gRPC server of this test's own, for loading, unloading and other changes."""
    server = grpc_server_factory()
    yield server
    server.process.stop()


@pytest.fixture
def client(grpc_server: GrpcServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(grpc_server.target) as c:
        yield c
