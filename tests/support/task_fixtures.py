"""Fixtures and helpers for the tasks tests: a real Docker engine, a busybox image
imported from the ``busybox-static`` binary (nothing can be pulled), a repository of
container models, and servers running them.

Imported by ``tests/tasks/conftest.py`` and ``tests/api/http/conftest.py``; the engine is
started by ``scripts/test``. Without one these tests fail, saying so: they are never
skipped.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.builders import write_model

IMAGE = "modelport-test/busybox:1"
BUSYBOX = Path("/usr/bin/busybox")
FINISHED = {"succeeded", "failed", "cancelled"}

UPPER = """\
runtime: container
description: upper-cases every input file
container:
  image: {image}
  cpus: 0.5
  memory: 64m
  command:
    - sh
    - -c
    - |
      echo hello-log
      for f in $(cd /input && find . -type f); do
        mkdir -p "/output/$(dirname "$f")"
        tr a-z A-Z < "/input/$f" > "/output/$f"
      done
      echo 0.5 > /output/.progress
      id -u > /output/uid
      cat /model/info.txt > /output/model.txt
      (touch /model/x 2>/dev/null && echo rw || echo ro) > /output/model_mode
      ls /sys/class/net > /output/net
      echo "$MODELPORT_PARAMETERS" > /output/parameters
"""
FAILS = """\
runtime: container
container:
  image: {image}
  command: [sh, -c, "echo starting; echo something broke >&2; exit 3"]
"""
HANGS = """\
runtime: container
container:
  image: {image}
  timeout: 1
  command: [sh, -c, "echo waiting forever; sleep 60"]
"""
EMPTY = """\
runtime: container
container:
  image: {image}
  command: [sh, -c, "echo nothing to do"]
"""
# Sleeps as many seconds as /input/seconds says, ticking in its log, then writes.
SLEEPY = """\
runtime: container
container:
  image: {image}
  command:
    - sh
    - -c
    - |
      n=$(cat /input/seconds)
      i=0
      while [ $i -lt $n ]; do echo tick $i; i=$((i + 1)); sleep 1; done
      cp /input/seconds /output/slept
"""
ONLINE = """\
runtime: fake
inputs: [{name: INPUT0, datatype: FP32, shape: [2]}]
outputs: [{name: OUTPUT0, datatype: FP32, shape: [2]}]
"""


def docker(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The busybox test image, imported once into the engine."""
    try:
        return import_busybox_image()
    except RuntimeError as exc:
        pytest.fail(str(exc))


def import_busybox_image() -> str:
    """Import the busybox test image into the engine unless it is there (also used by
    bench/cluster_run.py); RuntimeError says what is missing."""
    if shutil.which("docker") is None:
        raise RuntimeError("the docker CLI is missing; scripts/test installs docker.io")
    info = docker("info", timeout=30)
    if info.returncode != 0:
        raise RuntimeError(f"no Docker engine answers (scripts/test starts dockerd): {info.stderr}")
    if docker("image", "inspect", IMAGE).returncode == 0:
        return IMAGE
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing; scripts/test installs busybox-static")
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        for folder in ("bin", "etc", "tmp", "input", "output", "model"):
            (base / folder).mkdir()
        shutil.copy(BUSYBOX, base / "bin" / "busybox")
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True)
        for applet in applets.stdout.split():
            if applet != "busybox":
                (base / "bin" / applet).symlink_to("busybox")
        (base / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        )
        with subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE) as tar:
            done = subprocess.run(
                ["docker", "import", "-", IMAGE], stdin=tar.stdout, capture_output=True, text=True
            )
    if done.returncode != 0:
        raise RuntimeError(f"docker import failed: {done.stderr}")
    return IMAGE


# An image built the way the zip-task cluster server's model images are: its own CMD,
# reading /input and /model, writing /output (nothing when /input/nothing exists).
UPSTREAM_IMAGE = "modelport-test/upstream-model:1"
UPSTREAM_CMD = (
    "if [ -e /input/nothing ]; then echo nothing to do; exit 0; fi; "
    'for f in $(ls /input); do tr a-z A-Z < "/input/$f" > "/output/$f"; done; '
    "cat /model/weights.txt > /output/model.txt 2>/dev/null || echo none > /output/model.txt; "
    "df -k /dev/shm | tail -n 1 > /output/shm; id -u > /output/uid"
)


@pytest.fixture(scope="session")
def upstream_image(docker_image: str) -> str:
    """:data:`UPSTREAM_IMAGE`: the busybox image with a CMD of its own (committed from a
    container, since nothing can be pulled or built from a registry here)."""
    if docker("image", "inspect", UPSTREAM_IMAGE).returncode == 0:
        return UPSTREAM_IMAGE
    created = docker("create", docker_image, "true")
    if created.returncode != 0:
        pytest.fail(f"docker create failed: {created.stderr}")
    container = created.stdout.strip()
    try:
        cmd = f"CMD {json.dumps(['sh', '-c', UPSTREAM_CMD])}"
        done = docker("commit", "--change", cmd, container, UPSTREAM_IMAGE)
        if done.returncode != 0:
            pytest.fail(f"docker commit failed: {done.stderr}")
    finally:
        docker("rm", "-f", container)
    return UPSTREAM_IMAGE


@pytest.fixture(scope="session")
def task_repository(tmp_path_factory: pytest.TempPathFactory, docker_image: str) -> Path:
    root = tmp_path_factory.mktemp("task-repository")
    for name, text in (("upper", UPPER), ("fails", FAILS), ("hangs", HANGS),
                       ("empty", EMPTY), ("sleepy", SLEEPY)):  # fmt: skip
        write_model(root, name, text.format(image=docker_image), {"1/info.txt": f"{name} v1"})
    write_model(root, "online", ONLINE, {"1/README": "the fake runtime needs no files"})
    return root


StartTaskServer = Callable[..., Any]


@pytest.fixture
def task_server(
    server_factory: Callable[..., Any], task_repository: Path, tmp_path: Path
) -> Iterator[StartTaskServer]:
    """``start(slots=2, data_dir=..., port=..., **settings)``: a real server running tasks
    with its own data folder (``tmp_path/data`` unless given)."""
    started: list[Any] = []

    def start(slots: int = 2, data_dir: Path | None = None, port: int | None = None,
              **settings: Any) -> Any:  # fmt: skip
        env = {
            "MODELPORT_DATA_DIR": str(data_dir or tmp_path / "data"),
            "MODELPORT_TASK_SLOTS": str(slots),
            **{f"MODELPORT_{k.upper()}": str(v) for k, v in settings.items()},
        }
        proc = server_factory(env=env, port=port, repo=task_repository)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def submit(
    url: str, model: str, files: dict[str, bytes], parameters: str | None = None
) -> httpx.Response:
    data = {"model": model}
    if parameters is not None:
        data["parameters"] = parameters
    upload = [("files", (name, content)) for name, content in files.items()]
    return httpx.post(f"{url}/api/tasks", data=data, files=upload, timeout=30)


def submit_ok(url: str, model: str, files: dict[str, bytes], **kwargs: Any) -> str:
    response = submit(url, model, files, **kwargs)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def task(url: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/tasks/{task_id}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(url: str, task_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = task(url, task_id)
        if record["status"] in statuses:
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} still {record['status']} after {timeout} s: {record}")
        time.sleep(0.1)


def task_containers(task_id: str) -> list[str]:
    found = docker("ps", "-aq", "--filter", f"label=modelport.task={task_id}")
    return found.stdout.split()
