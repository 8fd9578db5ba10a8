"""Fixtures for the tests of modelport's images: built by ``scripts/build-images`` (on a
debootstrap base when nothing can be pulled, its root filesystem cached under the system
temp folder), started with ``docker run`` and waited for through their own health check.

The engine is started by ``scripts/test``; without one these tests fail, saying so.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.builders import add_sub_onnx, write_model

ROOT = Path(__file__).resolve().parents[2]
BUILD_IMAGES = ROOT / "scripts" / "build-images"
CPU_IMAGE = "modelport:cpu"
REDIS_IMAGE = "modelport/redis:7"
POSTGRES_IMAGE = "modelport/postgres:15"
HEALTHY_TIMEOUT_S = 120.0


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def build_images(*names: str) -> None:
    """``scripts/build-images NAMES``: cached layers make a rebuild of unchanged sources
    take seconds, so every session tests the images of the tree it runs in."""
    done = subprocess.run([str(BUILD_IMAGES), *names], capture_output=True, text=True, timeout=1500)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-images {' '.join(names)} failed:\n{done.stderr}")


@pytest.fixture(scope="session")
def service_images() -> tuple[str, str, str]:
    """modelport:cpu, and Redis and PostgreSQL images built from Debian's packages."""
    build_images("cpu", "redis", "postgres")
    return CPU_IMAGE, REDIS_IMAGE, POSTGRES_IMAGE


def onnx_repository(root: Path) -> Path:
    """``root/add_sub``: OUTPUT0 = INPUT0 + INPUT1 over [batch, 4] FP32, in ONNX."""
    folder = write_model(root, "add_sub", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    return root


def health_of(container: str) -> str:
    found = docker("inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", container)
    return found.stdout.strip() if found.returncode == 0 else f"gone: {found.stderr.strip()}"


def wait_healthy(container: str, timeout: float = HEALTHY_TIMEOUT_S) -> None:
    """Until the image's own HEALTHCHECK says healthy; the container's log if never."""
    deadline = time.monotonic() + timeout
    state = health_of(container)
    while state != "running healthy":
        if not state.startswith("running") or time.monotonic() > deadline:
            pytest.fail(f"{container}: {state} after {timeout} s:\n{logs(container)}")
        time.sleep(0.5)
        state = health_of(container)


def logs(container: str) -> str:
    found = docker("logs", "--tail", "60", container)
    return found.stdout + found.stderr


def published_port(container: str, port: int) -> int:
    found = docker("port", container, f"{port}/tcp")
    assert found.returncode == 0, found.stderr
    return int(found.stdout.split()[0].rsplit(":", 1)[1])


@dataclass
class Container:
    name: str

    def url(self, port: int = 8000) -> str:
        return f"http://127.0.0.1:{published_port(self.name, port)}"


@contextlib.contextmanager
def running(image: str, *, args: Sequence[str] = (), command: Sequence[str] = (),
            ports: Sequence[int] = (8000,)) -> Iterator[Container]:  # fmt: skip
    """``docker run -d`` of ``image`` with ``ports`` published on free loopback ports and
    a 1-second health check interval (the image's check, run sooner), healthy; removed
    after."""
    publish = [f"--publish=127.0.0.1::{port}" for port in ports]
    started = docker("run", "-d", "--health-interval=1s", *publish, *args, image, *command)
    if started.returncode != 0:
        pytest.fail(f"docker run {image} failed: {started.stderr}")
    name = started.stdout.strip()
    try:
        wait_healthy(name)
        yield Container(name)
    finally:
        docker("rm", "-f", "-v", name)
