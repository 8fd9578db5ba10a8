"""deploy/stack.yaml on a one-node Docker Swarm, for real: ``docker swarm init``, the
node labelled ``gpu=true``, ``docker stack deploy``, ``docker service scale
modelport_worker=3``, tasks spread over the replicas, one replica's container killed
while it runs a task and every task done exactly once; then ``docker stack rm`` and
``docker swarm leave --force``, always, since the rest of the suite uses the same engine
(and the test refuses to start in a swarm it did not make).

The stack deployed is a copy of deploy/stack.yaml less the worker's generic resource
(one GPU a replica): Swarm places such a replica only on a node that advertises GPUs
(dockerd's node-generic-resources), which this machine has not, and a variable cannot
make the list empty. The images are variables of the file (modelport:cpu for the
workers here), as are the ports; the copy adds the test's settings (health checked
every second, a lost task taken over after 3 s, tasks without API keys).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.deploy_fixtures import (
    DEPLOY,
    POLL_S,
    QUICK_SETTINGS,
    deploy_repository,
    output_files,
    readable_folder,
    run,
    run_ok,
    wait_ready,
    wait_workers,
    workers,
)
from support.image_fixtures import docker
from support.task_fixtures import FINISHED, submit_ok, task, task_containers

pytestmark = pytest.mark.timeout(420)

STACK = "modelport"
WORKERS = 3
TASKS = 6
SECONDS = b"3"  # each task's sleep: long enough to be killed in the middle of one
GONE_TIMEOUT_S = 60


def docker_ok(*args: str, env: dict[str, str] | None = None) -> str:
    return run_ok(["docker", *args], env=env)


def swarm_state() -> str:
    return docker_ok("info", "-f", "{{.Swarm.LocalNodeState}}").strip()


@contextlib.contextmanager
def one_node_swarm(listen_port: int) -> Iterator[str]:
    """``docker swarm init`` on loopback (the node id), left with ``--force`` after."""
    state = swarm_state()
    if state != "inactive":
        pytest.fail(
            f"the engine is already in a swarm ({state}): this test makes its own and leaves "
            "it after; if that swarm is a leftover, `docker swarm leave --force` first"
        )
    done = run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1",
                "--listen-addr", f"127.0.0.1:{listen_port}"])  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr
        yield docker_ok("info", "-f", "{{.Swarm.NodeID}}").strip()
    finally:
        run(["docker", "swarm", "leave", "--force"])
        assert swarm_state() == "inactive"


def stack_objects(kind: str) -> list[str]:
    """The stack's containers or networks (ids) or volumes (names) still on the engine."""
    label = f"label=com.docker.stack.namespace={STACK}"
    if kind == "container":
        return docker("ps", "-aq", "--filter", label).stdout.split()
    return docker(kind, "ls", "-q", "--filter", label).stdout.split()


@contextlib.contextmanager
def deployed(stack_file: Path, env: dict[str, str]) -> Iterator[None]:
    """``docker stack deploy``; after, ``docker stack rm`` and its containers, networks
    and volumes gone (Swarm removes the first two in the background)."""
    done = run(["docker", "stack", "deploy", "-c", str(stack_file), STACK], env=env)
    try:
        assert done.returncode == 0, done.stderr
        yield
    finally:
        run(["docker", "stack", "rm", STACK])
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while stack_objects("container") or stack_objects("network"):
            assert time.monotonic() < deadline, "the stack's containers did not go"
            time.sleep(POLL_S * 5)
        left = stack_objects("volume")
        if left:
            docker("volume", "rm", *left)


def cpu_stack(path: Path) -> Path:
    """deploy/stack.yaml without the worker's GPU reservation, with the test's settings."""
    stack: dict[str, Any] = yaml.safe_load((DEPLOY / "stack.yaml").read_text())
    services = stack["services"]
    worker = services["worker"]
    reservations = worker["deploy"]["resources"]["reservations"]
    gpu = [{"discrete_resource_spec": {"kind": "gpu", "value": 1}}]
    assert reservations.pop("generic_resources") == gpu
    if not reservations:
        del worker["deploy"]["resources"]
    for service in services.values():
        service["healthcheck"]["interval"] = "1s"
    services["server"]["environment"].update(QUICK_SETTINGS, MODELPORT_TASKS_OPEN="true")
    worker["environment"].update(QUICK_SETTINGS)
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


def replica_container(worker_id: str) -> str:
    """The container of the worker replica ``worker-N`` (task slot N)."""
    slot = worker_id.rsplit("-", 1)[1]
    found = docker_ok("ps", "--filter", f"label=com.docker.swarm.service.name={STACK}_worker",
                      "--format", '{{.ID}} {{.Label "com.docker.swarm.task.name"}}')  # fmt: skip
    for line in found.splitlines():
        container, name = line.split()
        if name.split(".")[1] == slot:
            return container
    pytest.fail(f"no container of {worker_id} in:\n{found}")


def service_container(service: str) -> str:
    found = docker_ok("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
    return found.split()[0]


def test_stack_deploy_scales_workers_and_a_killed_replica_s_task_is_done_once(
    service_images: tuple[str, str, str], docker_image: str, free_port: Callable[[], int],
    tmp_path: Path,
) -> None:  # fmt: skip
    cpu, redis_image, postgres_image = service_images
    stack_file = cpu_stack(tmp_path / "stack.yaml")
    with readable_folder("modelport-swarm-") as root:
        models = deploy_repository(root / "models", docker_image)
        (root / "worker").mkdir()  # Swarm makes no missing bind-mount source
        http_port = free_port()
        env = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "MODELS_DIR": str(models), "WORKER_DATA_DIR": str(root / "worker"),
            "HTTP_PORT": str(http_port), "GRPC_PORT": str(free_port()),
            "SERVER_IMAGE": cpu, "WORKER_IMAGE": cpu,
            "REDIS_IMAGE": redis_image, "POSTGRES_IMAGE": postgres_image,
            # One node: the new gateway cannot start beside the old one (stack.yaml).
            "GATEWAY_UPDATE_ORDER": "stop-first",
        }  # fmt: skip
        task_ids: list[str] = []
        try:
            with one_node_swarm(free_port()) as node, deployed(stack_file, env):
                docker_ok("node", "update", "--label-add", "gpu=true", node)
                check_the_stack(f"http://127.0.0.1:{http_port}", task_ids)
        finally:
            for task_id in task_ids:  # a task container a killed replica left, if any
                for container in task_containers(task_id):
                    docker("rm", "-f", container)
    assert swarm_state() == "inactive"
    assert not stack_objects("volume")


def check_the_stack(url: str, task_ids: list[str]) -> None:
    wait_ready(url, 180, lambda: run(["docker", "service", "ps", "--no-trunc", f"{STACK}_server"]))
    docker_ok("service", "scale", "--detach", f"{STACK}_worker={WORKERS}")
    replicas = wait_workers(url, "sleepy", WORKERS, 180)
    assert replicas == [f"worker-{n}" for n in range(1, WORKERS + 1)]  # {{.Task.Slot}}

    task_ids += [submit_ok(url, "sleepy", {"seconds": SECONDS}) for _ in range(TASKS)]
    ran_on: dict[str, set[str]] = {task_id: set() for task_id in task_ids}
    killed: tuple[str, str] | None = None  # (worker, task)
    deadline = time.monotonic() + 120
    while True:
        for info in workers(url):
            for task_id in info["running"]:
                ran_on[task_id].add(info["id"])
                if killed is None:
                    # The replica's container, killed in the middle of the task.
                    docker_ok("kill", replica_container(info["id"]))
                    killed = (info["id"], task_id)
        records = {task_id: task(url, task_id) for task_id in task_ids}
        if all(r["status"] in FINISHED for r in records.values()):
            break
        assert time.monotonic() < deadline, records
        time.sleep(POLL_S)
    assert killed is not None

    assert {r["status"] for r in records.values()} == {"succeeded"}, records
    for task_id in task_ids:
        assert output_files(url, task_id)["slept"] == SECONDS
    # Spread: the replicas shared the tasks (a task seen on two workers ran again).
    assert len(set().union(*ran_on.values())) >= 2, ran_on
    # The killed replica's task ran again, as a second attempt; nothing else did.
    attempts = {task_id: r["attempts"] for task_id, r in records.items()}
    assert attempts.pop(killed[1]) == 2, (killed, records)
    assert set(attempts.values()) == {1}, records
    # Exactly once: one output file per task in the task-files volume, nothing pending.
    found = docker_ok("exec", service_container(f"{STACK}_server"), "find",
                      "/var/lib/modelport-files", "-name", "output.zip")  # fmt: skip
    assert sorted(path.split("/")[-2] for path in found.split()) == sorted(task_ids), found
    redis = service_container(f"{STACK}_redis")
    pending = docker_ok("exec", redis, "redis-cli", "XPENDING", "modelport:tasks:sleepy", "workers")
    assert pending.split()[0] == "0", pending
    # Swarm restarted the killed replica, under its old name.
    assert wait_workers(url, "sleepy", WORKERS, 60) == replicas
    print(f"tasks per worker: {ran_on}; killed {killed}")
    assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
