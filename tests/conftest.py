"""Shared fixtures: a test model repository, real server processes, an in-process app.

The repository is built once per session in code (``tests/support/builders.py``). ``server`` is
a real ``python -m modelport serve`` process on a free loopback port, shared by the
tests that only read; tests that load, unload or change settings start their own with
``server_factory`` (or take ``own_server``). ``inproc`` is the same application driven
in process through ``httpx.ASGITransport``, so every HTTP route is tested both ways.

Tests use these through fixtures only: the other ``conftest.py`` files below this one
are also imported as ``conftest``, so ``from conftest import ...`` would find the wrong
one depending on collection order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.builders import (
    ONNX_TYPES,
    add_sub_onnx,
    identity_onnx,
    mlp_onnx,
    write_model,
    write_slow_model,
)
from support.s3_fixtures import s3  # noqa: F401 (moto's S3 server, a fixture for any test)

# Every server a test starts (they inherit this environment) stops at once on SIGTERM,
# not after the default 5 s drain; the drain's own tests (tests/server) set theirs.
os.environ.setdefault("MODELPORT_DRAIN_SECONDS", "0")

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# One identity model per v2 datatype: identity_bool, identity_uint8, ... identity_bytes.
IDENTITY_MODELS = {datatype: f"identity_{datatype.lower()}" for datatype in ONNX_TYPES}

# The fake ``slow`` model: one request at a time, DELAY_MS each, SLOW_QUEUE waiting at most.
SLOW_DELAY_MS = 150
SLOW_QUEUE = 2

BROKEN_YAML = """\
runtime: onnx
max_batch_sise: 8
"""


def build_repository(root: Path) -> Path:
    """The test repository: add_sub, mlp, identity_<type> for every type, slow, broken."""
    folder = write_model(root, "add_sub", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    folder = write_model(root, "mlp", "runtime: onnx\nmax_batch_size: 8\n")
    mlp_onnx(folder / "1" / "model.onnx", sizes=(16, 32, 10))
    for datatype, name in IDENTITY_MODELS.items():
        folder = write_model(root, name, "runtime: onnx\nmax_batch_size: 8\n")
        identity_onnx(folder / "1" / "model.onnx", datatype)
    write_slow_model(root, "slow", SLOW_DELAY_MS, SLOW_QUEUE)
    write_model(root, "broken", BROKEN_YAML, {"1/README": "never loads"})
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A real ``modelport serve`` process; its stdout and stderr go to ``log_path``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"server exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"server not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        stop_all([self])
        return self.process.returncode


def stop_all(servers: Sequence[ServerProcess]) -> None:
    """SIGTERM to every server at once, then wait for each (killed past
    ``STOP_TIMEOUT_S``): a session's dozens of servers stop in the time of the slowest,
    not of all of them one after another."""
    running = [s.process for s in servers if s.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(
    args: list[str], log_path: Path, url: str, env: Mapping[str, str] | None = None
) -> ServerProcess:
    """Start ``python -m modelport <args>`` with its output in ``log_path``."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelport", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    return ServerProcess(process, url, log_path)


StartServer = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def server_factory(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartServer]:
    """``start(env=..., port=..., repo=..., grpc_port=..., args=...)`` starts a server
    (``args``: more ``serve`` flags) and waits until it is ready; all are stopped at the
    end of the session. gRPC is off unless a ``grpc_port`` is given
    (tests/api/grpc/conftest.py does)."""
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("server-logs")

    def start(
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        repo: Path | None = None,
        grpc_port: int = 0,
        args: Sequence[str] = (),
    ) -> ServerProcess:
        port = port or free_port()
        log_path = logs / f"server-{port}.log"
        # Task records and files go to a folder of the test's, never the working folder.
        env = {"MODELPORT_DATA_DIR": str(logs / f"data-{port}"), **(env or {})}
        proc = launch(
            [
                "serve",
                str(repo or repository),
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                *args,
            ],
            log_path,
            f"http://127.0.0.1:{port}",
            env,
        )
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    stop_all(started)


def _report_log(request: pytest.FixtureRequest, proc: ServerProcess) -> None:
    """Print the server's log under a failed test (pytest shows captured output)."""
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"---- server log ({proc.log_path}) ----\n{proc.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def shared_server(server_factory: StartServer) -> ServerProcess:
    return server_factory()


@pytest.fixture
def server(shared_server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[str]:
    """The shared server's base URL; tests using it must leave its models as they were."""
    assert shared_server.process.poll() is None, shared_server.log()
    yield shared_server.url
    _report_log(request, shared_server)
    assert shared_server.process.poll() is None, f"server died:\n{shared_server.log()}"


@pytest.fixture
def own_server(
    server_factory: StartServer, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """A server of this test's own, for loading, unloading and other changes of state."""
    proc = server_factory()
    yield proc
    _report_log(request, proc)
    proc.stop()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """A function returning a loopback port that nothing listens on."""
    return free_port


@pytest.fixture
async def inproc(repository: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP app in this process, on a fresh service, through httpx's ASGI transport."""
    async with inproc_client(repository) as client:
        yield client


InprocFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def inproc_factory(repository: Path) -> InprocFactory:
    """``async with inproc_factory(max_request_bytes=..., repo=...) as client``: another
    in-process app over the test repository (or ``repo``), with its own settings."""

    def make(max_request_bytes: int | None = None, repo: Path | None = None) -> Any:
        return inproc_client(repo or repository, max_request_bytes)

    return make


@contextlib.asynccontextmanager
async def inproc_client(
    repository: Path, max_request_bytes: int | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    from modelport.api.http.app import create_app
    from modelport.observability.metrics import metrics_registry
    from modelport.server.build import build_service
    from modelport.settings import Settings

    settings = Settings(repository=str(repository))
    service = build_service(settings)
    await service.open()
    _, asgi = create_app(
        service,
        metrics=metrics_registry(service),
        max_body=max_request_bytes or settings.max_request_bytes,
    )
    transport = httpx.ASGITransport(app=asgi)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://inproc") as client:
            yield client
    finally:
        await service.close()
