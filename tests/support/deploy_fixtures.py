"""Helpers for running deploy/compose.yaml and deploy/stack.yaml for real
(tests/deploy/test_compose.py and test_swarm.py): the compose CLI this machine has, a
model repository the images' user can read, and waits on the gateway's HTTP API.

The images are those of ``service_images`` (tests/support/image_fixtures.py) and the task
models run the busybox image of ``docker_image`` (tests/support/task_fixtures.py).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.builders import write_model
from support.cluster_fixtures import wait_until
from support.image_fixtures import onnx_repository
from support.task_fixtures import SLEEPY, UPPER

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# What the tests' stack and project set in the containers, on top of the deploy files:
# a lost task is taken over after 3 s (not 60), and a stopping server does not drain.
QUICK_SETTINGS = {"MODELPORT_TASK_VISIBILITY_SECONDS": "3", "MODELPORT_DRAIN_SECONDS": "0"}
POLL_S = 0.1


def compose_cli() -> list[str]:
    """``docker compose`` (v2) when the Docker CLI has the plugin, else Debian's
    ``docker-compose`` (v1): the commands are the same."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("neither docker compose nor docker-compose (apt docker-compose) is here")
    return [found]


def run(
    command: list[str], env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def run_ok(command: list[str], env: Mapping[str, str] | None = None, timeout: float = 180) -> str:
    done = run(command, env=env, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def readable_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder the images' modelport user (uid 10001) can read: pytest's own
    are root's alone (0700). Removed after, with what root containers wrote in it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def deploy_repository(root: Path, task_image: str) -> Path:
    """``root``: add_sub (ONNX, online), and the container models ``upper`` and
    ``sleepy`` (sleeps /input/seconds, then copies it to /output/slept)."""
    onnx_repository(root)
    write_model(root, "upper", UPPER.format(image=task_image), {"1/info.txt": "upper v1"})
    write_model(root, "sleepy", SLEEPY.format(image=task_image), {"1/info.txt": "sleepy v1"})
    return root


def wait_ready(url: str, timeout: float, why: Any = "") -> None:
    """Until ``GET /v2/health/ready`` answers 200; ``why()`` (the logs) in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not ready within {timeout} s:\n{why() if callable(why) else why}")
        time.sleep(POLL_S * 2)


def workers(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/workers", timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["workers"])


def wait_workers(url: str, model: str, count: int, timeout: float) -> list[str]:
    """The ids of ``count`` live workers hosting the task model ``model`` (the gateway,
    which lists its own models too, is not a worker)."""

    def hosting() -> list[str] | None:
        listed = [w for w in workers(url) if w["role"] == "worker"]
        found = sorted(w["id"] for w in listed if model in w["task_models"])
        return found if len(found) >= count else None

    ids: list[str] = wait_until(hosting, timeout, f"{count} workers hosting {model}")
    return ids


def output_files(url: str, task_id: str) -> dict[str, bytes]:
    got = httpx.get(f"{url}/api/tasks/{task_id}/output", timeout=30)
    assert got.status_code == 200, got.text
    with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}
