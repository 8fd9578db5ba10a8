"""deploy/compose.yaml for real: ``up`` with the images ``scripts/build-images`` makes
(Redis and PostgreSQL from Debian's packages, as REDIS_IMAGE and POSTGRES_IMAGE), an
inference through the gateway, tasks run by the worker with their files on the shared
task-files volume, the worker killed mid-task and the task finished, once, by the
restarted worker; ``down`` leaves the named volumes.

Through ``docker compose`` when the CLI has the plugin, else ``docker-compose`` (v1). A
project of its own on free host ports, with deploy/env.example as the .env file and an
override file of the test's settings (health checked every second, a lost task taken
over after 3 s). compose.gpu.yaml and compose.s3.yaml are not run here (no GPU, no MinIO
image): tests/test_deploy.py checks them with ``docker-compose config``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.deploy_fixtures import (
    DEPLOY,
    POLL_S,
    QUICK_SETTINGS,
    compose_cli,
    deploy_repository,
    output_files,
    readable_folder,
    run,
    run_ok,
    wait_ready,
    wait_workers,
)
from support.image_fixtures import docker
from support.task_fixtures import submit_ok, task, task_containers, wait_for

pytestmark = pytest.mark.timeout(300)

VOLUMES = ("server-data", "redis-data", "postgres-data", "task-files")
WORKER_ID = "compose-worker"


class Project:
    """``docker compose -p NAME -f compose.yaml -f OVERRIDE --env-file env.example``."""

    def __init__(self, name: str, override: Path, env: dict[str, str]) -> None:
        self.name, self.env = name, env
        self.base = [*compose_cli(), "-p", name, "--env-file", str(DEPLOY / "env.example"),
                     "-f", str(DEPLOY / "compose.yaml"), "-f", str(override)]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 180) -> str:
        return run_ok([*self.base, *args], env=self.env, timeout=timeout)

    def logs(self) -> str:
        done = run([*self.base, "logs", "--no-color", "--tail", "40"], env=self.env)
        return done.stdout + done.stderr

    def volumes(self) -> set[str]:
        found = docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.name}"
        )
        return set(found.stdout.split())


def write_override(path: Path) -> Path:
    """The test's settings on top of compose.yaml: health checks every second (the first
    check waits one interval), a lost task taken over after 3 s, tasks without API keys."""
    quick = {"healthcheck": {"interval": "1s"}}
    services: dict[str, Any] = {name: dict(quick) for name in ("redis", "postgres")}
    services["server"] = {
        **quick,
        "environment": {**QUICK_SETTINGS, "MODELPORT_TASKS_OPEN": "true"},
    }
    services["worker"] = {**quick, "environment": dict(QUICK_SETTINGS)}
    path.write_text(yaml.safe_dump({"services": services}))
    return path


def test_compose_up_serves_runs_tasks_outlives_a_killed_worker_and_keeps_its_volumes(
    service_images: tuple[str, str, str], docker_image: str, free_port: Callable[[], int],
    tmp_path: Path,
) -> None:  # fmt: skip
    cpu, redis_image, postgres_image = service_images
    project_name = f"modelport-test-{os.getpid()}-{tmp_path.name[-12:]}".lower().replace("_", "-")
    with readable_folder("modelport-compose-") as root:
        models = deploy_repository(root / "models", docker_image)
        http_port = free_port()
        env = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "MODELS_DIR": str(models), "WORKER_DATA_DIR": str(root / "worker"),
            "WORKER_ID": WORKER_ID, "HTTP_PORT": str(http_port), "GRPC_PORT": str(free_port()),
            "REDIS_PORT": str(free_port()), "POSTGRES_PORT": str(free_port()),
            "SERVER_IMAGE": cpu, "WORKER_IMAGE": cpu,
            "REDIS_IMAGE": redis_image, "POSTGRES_IMAGE": postgres_image,
        }  # fmt: skip
        project = Project(project_name, write_override(tmp_path / "override.yaml"), env)
        task_ids: list[str] = []
        try:
            check_the_project(project, f"http://127.0.0.1:{http_port}", task_ids)
            project("down", "-t", "5")
            # down without -v: the data stays for the next up.
            assert project.volumes() == {f"{project_name}_{v}" for v in VOLUMES}
        finally:
            run([*project.base, "down", "-t", "2"], env=env)
            left = project.volumes()
            if left:
                docker("volume", "rm", *left)
            for task_id in task_ids:  # a task container the killed worker left, if any
                for container in task_containers(task_id):
                    docker("rm", "-f", container)


def check_the_project(project: Project, url: str, task_ids: list[str]) -> None:
    # up waits for Redis and PostgreSQL to be healthy (depends_on), not for the others.
    project("up", "-d", "--no-build")
    wait_ready(url, 120, project.logs)

    # An inference through the gateway, which serves the models folder itself.
    body = {"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]}  # fmt: skip
    answer = httpx.post(f"{url}/v2/models/add_sub/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2, 3, 4, 5]

    # A task run by the worker (the server runs none): its files go through the volume,
    # written by the worker (root) and read by the server (the modelport user).
    assert wait_workers(url, "upper", 1, 120) == [WORKER_ID]
    task_ids.append(submit_ok(url, "upper", {"a.txt": b"through compose"}))
    record = wait_for(url, task_ids[0], {"succeeded", "failed"}, 60)
    assert record["status"] == "succeeded", record
    assert output_files(url, task_ids[0])["a.txt"] == b"THROUGH COMPOSE"

    # The worker killed while it runs a task; restarted, it takes the task over.
    task_ids.append(submit_ok(url, "sleepy", {"seconds": b"3"}))
    wait_for(url, task_ids[1], {"running"}, 30)
    project("kill", "worker")
    killed_at = time.monotonic()
    assert task(url, task_ids[1])["status"] == "running"  # killed before it finished
    # restart: unless-stopped does not bring back a container compose killed.
    project("up", "-d", "--no-deps", "--no-build", "worker")
    record = wait_for(url, task_ids[1], {"succeeded", "failed"}, 90)
    assert record["status"] == "succeeded", (record, project.logs())
    assert record["attempts"] == 2, record  # the killed run, and the one that finished
    assert output_files(url, task_ids[1])["slept"].strip() == b"3"
    print(f"killed worker's task finished {time.monotonic() - killed_at:.1f} s after the kill")

    # Exactly once: one output per task on the volume, nothing left pending in Redis, no
    # task container left behind (the first run's was removed before the second).
    outputs = project("exec", "-T", "server", "find", "/var/lib/modelport-files",
                      "-name", "output.zip").split()  # fmt: skip
    assert sorted(p.split("/")[-2] for p in outputs) == sorted(task_ids), outputs
    pending = project("exec", "-T", "redis", "redis-cli", "XPENDING", "modelport:tasks:sleepy",
                      "workers").split()  # fmt: skip
    assert pending[0] == "0", pending
    deadline = time.monotonic() + 10
    while task_containers(task_ids[1]) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert task_containers(task_ids[1]) == []
