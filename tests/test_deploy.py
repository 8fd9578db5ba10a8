"""deploy/: the compose file, the Dockerfiles, the entrypoint and the images' health check.

These checks run without building anything (the images themselves are built and run by
tests/deploy/): the compose file is checked by the real compose CLI (``docker-compose
config``, offline: it validates the file against the Compose schema and resolves
variables), its modelport commands by modelport's own command-line parser and its
``MODELPORT_*`` variables by ``Settings``; the Dockerfiles against the repository (the
files they copy, the pinned packages they install); the entrypoint with a stand-in
``modelport``; and the health check script against a real server and a real worker.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from modelport.cli.main import app
from modelport.settings import ENV_PREFIX, Settings
from support import cluster_fixtures
from support.cluster_fixtures import RedisServer, StartWorker

# The cluster's fixtures (tests/cluster has them through its conftest.py).
redis_server = cluster_fixtures.redis_server
worker_factory = cluster_fixtures.worker_factory

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
HEALTHCHECK = DEPLOY / "healthcheck.py"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
LONG_RUNNING = ("server", "worker", "redis", "postgres")
GPU, S3 = "compose.gpu.yaml", "compose.s3.yaml"
FILES = "/var/lib/modelport-files"  # task files: the task-files volume, in server and worker


def compose_cli() -> str:
    """Debian's ``docker-compose`` (v1). The v2 plugin prints another layout (long-form
    volumes and ports, ``required`` in depends_on), which these checks do not read."""
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose is missing; scripts/test installs it (apt docker-compose)")
    return found


def compose_config(
    overrides: Mapping[str, str] | None = None, overlays: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``config`` of deploy/compose.yaml (and ``overlays`` after it, as ``-f`` adds them)
    with deploy/env.example as its .env (never a developer's own deploy/.env), and
    ``overrides`` as the shell's environment."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(overrides or {})}
    files = [arg for name in ("compose.yaml", *overlays) for arg in ("-f", str(DEPLOY / name))]
    done = subprocess.run(
        [compose_cli(), "--env-file", str(DEPLOY / "env.example"), *files, "config"],
        capture_output=True, text=True, env=env, cwd=DEPLOY, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def compose_gpu_s3() -> dict[str, Any]:
    """compose.yaml with both overlays: a GPU worker, task files in MinIO."""
    return compose_config(overlays=(GPU, S3))


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the list form: ["KEY=value"]
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def parse_modelport(command: list[str]) -> Result:
    """Parse a container's command as the image's ``modelport`` entrypoint would, up to
    the point of running it: ``--help`` stops it there, after an unknown option (or a
    missing value) has already failed the parse with exit code 2."""
    return CliRunner().invoke(app, [*command, "--help"])


def test_compose_has_the_services_of_a_cluster(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == set(LONG_RUNNING)
    assert services["redis"]["image"] == "redis:7"
    assert services["postgres"]["image"] == "postgres:16"
    # The worker runs CPU tasks on the gateway's image; compose.gpu.yaml makes it a GPU one.
    for name in ("server", "worker"):
        assert services[name]["image"] == "modelport:cpu"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        # The build context is the repository root.
        assert Path(services[name]["build"]["context"]).resolve() == ROOT
    assert "deploy" not in services["worker"]  # no GPU reservation without the overlay
    assert env_of(services["worker"])["MODELPORT_TASK_SLOTS"] == "1"


def test_the_overlays_add_minio_and_a_gpu_worker(compose_gpu_s3: dict[str, Any]) -> None:
    services = compose_gpu_s3["services"]
    assert set(services) == {*LONG_RUNNING, "s3", "s3-bucket"}
    assert services["s3"]["image"].startswith("minio/minio")
    assert services["worker"]["image"] == "modelport:cuda"
    assert services["worker"]["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert services["server"]["image"] == "modelport:cpu"


def test_images_are_variables_for_where_docker_hub_is_out_of_reach() -> None:
    local = {"REDIS_IMAGE": "modelport/redis:7", "POSTGRES_IMAGE": "modelport/postgres:15",
             "SERVER_IMAGE": "registry.example/modelport:cpu",
             "WORKER_IMAGE": "registry.example/modelport:cpu"}  # fmt: skip
    services = compose_config(local)["services"]
    assert services["redis"]["image"] == "modelport/redis:7"
    assert services["postgres"]["image"] == "modelport/postgres:15"
    assert services["server"]["image"] == services["worker"]["image"] == local["SERVER_IMAGE"]
    gpu = compose_config({"WORKER_GPU_IMAGE": "registry.example/modelport:cuda"}, (GPU,))
    assert gpu["services"]["worker"]["image"] == "registry.example/modelport:cuda"


def test_the_gpu_worker_reserves_its_gpus(compose_gpu_s3: dict[str, Any]) -> None:
    worker = compose_gpu_s3["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    # The same GPU gets the task slot: task_gpus takes the host's ids, as the reservation
    # does; the online models find the GPU they are given through NVML (gpus unset).
    env = env_of(worker)
    assert env["MODELPORT_TASK_GPUS"] == "0"
    assert "MODELPORT_GPUS" not in env
    assert Settings.load(environ=env, config=None).task_gpu_ids == [0]


def test_every_node_shares_redis_postgres_and_the_task_files(compose: dict[str, Any]) -> None:
    server, worker = compose["services"]["server"], compose["services"]["worker"]
    store = "postgresql://modelport:change-me-postgres@postgres:5432/modelport"
    broker = "redis://:change-me-redis@redis:6379/0"
    assert flag(server["command"], "--broker") == flag(worker["command"], "--broker") == broker
    assert flag(worker["command"], "--store") == env_of(server)["MODELPORT_TASK_STORE"] == store
    for node in (server, worker):
        assert env_of(node)["MODELPORT_TASK_FILES"] == FILES
        assert f"task-files:{FILES}:rw" in node["volumes"]
    # The password is the one PostgreSQL is given.
    assert env_of(compose["services"]["postgres"])["POSTGRES_PASSWORD"] == "change-me-postgres"


def test_with_s3_every_node_keeps_task_files_in_the_bucket(compose_gpu_s3: dict[str, Any]) -> None:
    services = compose_gpu_s3["services"]
    for name in ("server", "worker"):
        env = env_of(services[name])
        assert env["MODELPORT_TASK_FILES"] == "s3://modelport/tasks"
        assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
        assert env["AWS_ACCESS_KEY_ID"] == "modelport"
        assert env["AWS_SECRET_ACCESS_KEY"] == env_of(services["s3"])["MINIO_ROOT_PASSWORD"]
        assert services[name]["depends_on"]["s3-bucket"] == {
            "condition": "service_completed_successfully"
        }
    assert services["s3-bucket"]["depends_on"] == {"s3": {"condition": "service_healthy"}}


def test_a_gpu_host_points_the_worker_at_the_first_host() -> None:
    config = compose_config({"REDIS_HOST": "10.0.0.5", "POSTGRES_HOST": "10.0.0.5",
                             "S3_ENDPOINT_URL": "http://10.0.0.5:9000", "WORKER_GPUS": "1",
                             "WORKER_ID": "gpu-host-2"}, (GPU, S3))  # fmt: skip
    worker = config["services"]["worker"]
    assert flag(worker["command"], "--broker") == "redis://:change-me-redis@10.0.0.5:6379/0"
    assert "@10.0.0.5:5432/" in flag(worker["command"], "--store")
    assert env_of(worker)["AWS_ENDPOINT_URL"] == "http://10.0.0.5:9000"
    assert env_of(worker)["MODELPORT_TASK_GPUS"] == "1"
    assert flag(worker["command"], "--worker-id") == "gpu-host-2"
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]


def test_the_commands_parse_with_modelport_s_own_cli(
    compose: dict[str, Any], compose_gpu_s3: dict[str, Any]
) -> None:
    for config in (compose, compose_gpu_s3):
        for name in ("server", "worker"):
            command = config["services"][name]["command"]
            parsed = parse_modelport(command)
            assert parsed.exit_code == 0, parsed.output
            assert f" {command[0]} [OPTIONS]" in parsed.output
    typo = parse_modelport(["worker", "/models", "--gpu", "0"])  # the check has teeth
    assert typo.exit_code == 2
    assert "No such option: --gpu" in typo.output


def test_the_environment_holds_settings_that_exist(
    compose: dict[str, Any], compose_gpu_s3: dict[str, Any]
) -> None:
    for config in (compose, compose_gpu_s3):
        for name in ("server", "worker"):
            env = env_of(config["services"][name])
            for key in env:
                if key.startswith(ENV_PREFIX):
                    assert key[len(ENV_PREFIX) :].lower() in Settings.model_fields, key
            settings = Settings.load(environ=env, config=None)  # validates every value
            assert settings.data_dir
    server = Settings.load(environ=env_of(compose["services"]["server"]))
    assert server.task_slots == 0  # container tasks run on the workers, which have Docker


def test_the_worker_can_run_container_tasks(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    volumes = worker["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock:rw" in volumes
    # Task containers are started by the host's engine, which mounts host paths: the
    # models and the work folder must be at the same path inside and outside.
    data_dir = env_of(worker)["MODELPORT_DATA_DIR"]
    assert f"{data_dir}:{data_dir}:rw" in volumes
    models = worker["command"][1]
    assert f"{models}:{models}:ro" in volumes
    # Root for the socket, in the modelport group with a group-readable umask, so that
    # the server (the modelport user) reads the task files it writes.
    assert worker["user"] == "root:modelport"
    assert env_of(worker)["MODELPORT_DATA_DIR_MODE"] == "group"


def test_services_are_healthy_before_they_are_used(
    compose: dict[str, Any], compose_gpu_s3: dict[str, Any]
) -> None:
    services = compose_gpu_s3["services"]
    for name in (*LONG_RUNNING, "s3"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("server", "worker"):
        assert compose["services"][name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
    worker_check = services["worker"]["healthcheck"]["test"]
    broker = flag(services["worker"]["command"], "--broker")
    assert worker_check[-3:] == ["worker", broker, "gpu-host-1"]


def test_data_lives_in_volumes_and_redis_keeps_it(
    compose: dict[str, Any], compose_gpu_s3: dict[str, Any]
) -> None:
    services = compose_gpu_s3["services"]
    command = services["redis"]["command"]
    assert flag(command, "--appendonly") == "yes"
    # Reachable from other hosts, so never without a password (the health check's too).
    assert flag(command, "--requirepass") == env_of(services["redis"])["REDISCLI_AUTH"]
    assert set(compose["volumes"]) == {"server-data", "redis-data", "postgres-data", "task-files"}
    assert set(compose_gpu_s3["volumes"]) == {*compose["volumes"], "s3-data"}
    for name, target in (("redis", "/data"), ("postgres", "/var/lib/postgresql/data"),
                         ("s3", "/data"), ("server", "/var/lib/modelport")):  # fmt: skip
        assert any(v.split(":")[1] == target for v in services[name]["volumes"]), name


def test_no_secret_is_more_than_an_example() -> None:
    text = (DEPLOY / "env.example").read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    for key in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert values[key].startswith("change-me"), key
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()  # the real one


# -- stack.yaml (Docker Swarm), as `docker stack config` resolves it -----------------------


def stack_config(overrides: Mapping[str, str] | None = None) -> dict[str, Any]:
    """deploy/stack.yaml with its variables resolved, offline (no swarm needed), from
    ``overrides`` alone (``docker stack deploy`` reads no .env file): by Swarm's own
    loader, ``docker stack config`` (Docker CLI 23 and later), else by ``docker-compose
    config``, whose schema has the same ``deploy:`` sections (Debian's CLI is 20.10)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(overrides or {})}
    stack = str(DEPLOY / "stack.yaml")
    commands = subprocess.run(["docker", "stack", "--help"], capture_output=True, text=True)
    command = (
        ["docker", "stack", "config", "-c", stack]
        if re.search(r"^\s+config\s", commands.stdout, re.MULTILINE)
        else [compose_cli(), "-f", stack, "config"]
    )
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def mounts(service: Mapping[str, Any]) -> set[tuple[str, str, bool]]:
    """(source, target, read-only) of each mount, from the long form (``docker stack
    config``) or the short one (``docker-compose config``)."""
    found = set()
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target, mode = volume.split(":")
            found.add((source, target, mode == "ro"))
        else:
            found.add((volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return stack_config()


def test_stack_services_reach_each_other_without_ipvs(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) == set(LONG_RUNNING)
    # No VIPs and no routing mesh (both need IPVS): DNS round robin, ports on the node.
    for name, service in services.items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        assert service["deploy"]["restart_policy"]["condition"] == "any", name
        for port in service.get("ports", []):
            assert port["mode"] == "host", name
    ports = {p["target"]: p["published"] for p in services["server"]["ports"]}
    assert ports == {8000: 8000, 8001: 8001}
    # Redis and PostgreSQL are reached over the overlay network only.
    assert "ports" not in services["redis"] and "ports" not in services["postgres"]
    for name in ("redis", "postgres"):  # their data is a volume of one node
        assert services[name]["deploy"]["placement"]["constraints"] == ["node.role == manager"]


def test_stack_workers_take_one_gpu_each_on_gpu_nodes(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    deploy = worker["deploy"]
    assert deploy["placement"]["constraints"] == ["node.labels.gpu == true"]
    # The engine names the GPU in DOCKER_RESOURCE_GPU, which the entrypoint makes the task
    # slot's (test_entrypoint_gives_a_swarm_replica_s_gpu_its_task_slot).
    assert deploy["resources"]["reservations"]["generic_resources"] == [
        {"discrete_resource_spec": {"kind": "gpu", "value": 1}}
    ]
    assert worker["image"] == "modelport:cuda"
    env = env_of(worker)
    assert env["MODELPORT_WORKER_ID"] == "worker-{{.Task.Slot}}"  # a Swarm template
    assert "MODELPORT_TASK_GPUS" not in env and "MODELPORT_TASK_SLOTS" not in env
    # (docker-compose config writes a $ as $$ again, as a compose file would.)
    check = [word.replace("$$", "$") for word in worker["healthcheck"]["test"]]
    assert check == ["CMD-SHELL", "python /opt/modelport/healthcheck.py worker "
                     '"$MODELPORT_BROKER" "$MODELPORT_WORKER_ID"']  # fmt: skip


def test_stack_rolls_the_gateway_out_start_first() -> None:
    update = stack_config()["services"]["server"]["deploy"]["update_config"]
    assert (update["order"], update["failure_action"]) == ("start-first", "rollback")
    one_node = stack_config({"GATEWAY_UPDATE_ORDER": "stop-first"})
    assert one_node["services"]["server"]["deploy"]["update_config"]["order"] == "stop-first"
    assert stack_config()["services"]["worker"]["deploy"]["update_config"]["order"] == "stop-first"


def test_stack_runs_what_compose_runs(stack: dict[str, Any], compose: dict[str, Any]) -> None:
    services = stack["services"]
    server, worker = services["server"], services["worker"]
    assert server["command"] == [
        "serve", "/srv/modelport/models", "--host", "0.0.0.0",
        "--broker", "redis://:change-me-redis@redis:6379/0",
    ]  # fmt: skip
    assert env_of(worker)["MODELPORT_BROKER"] == flag(server["command"], "--broker")
    assert env_of(worker)["MODELPORT_TASK_STORE"] == env_of(server)["MODELPORT_TASK_STORE"]
    for name in ("server", "worker"):
        env = env_of(services[name])
        assert parse_modelport(services[name]["command"]).exit_code == 0
        assert env["MODELPORT_TASK_FILES"] == FILES
        for key in env:
            if key.startswith(ENV_PREFIX):
                assert key[len(ENV_PREFIX) :].lower() in Settings.model_fields, key
        # Templates are Swarm's to fill in; the rest must be valid settings.
        Settings.load(environ={k: v.replace("{{.Task.Slot}}", "1") for k, v in env.items()})
        assert ("task-files", FILES, False) in mounts(services[name]), name
    # The worker as compose.yaml runs it: root in the modelport group, the socket, the
    # models and its work folder at the same paths as on the node.
    assert worker["user"] == compose["services"]["worker"]["user"] == "root:modelport"
    assert env_of(worker)["MODELPORT_DATA_DIR_MODE"] == "group"
    assert mounts(worker) == {
        ("/var/run/docker.sock", "/var/run/docker.sock", False),
        ("/srv/modelport/models", "/srv/modelport/models", True),
        ("/var/lib/modelport-worker", "/var/lib/modelport-worker", False),
        ("task-files", FILES, False),
    }
    assert compose["services"]["redis"]["command"][:-1] == services["redis"]["command"][:-1]


def test_stack_images_and_ports_are_variables() -> None:
    local = {"REDIS_IMAGE": "modelport/redis:7", "POSTGRES_IMAGE": "modelport/postgres:15",
             "WORKER_IMAGE": "modelport:cpu", "HTTP_PORT": "18000"}  # fmt: skip
    services = stack_config(local)["services"]
    assert services["redis"]["image"] == "modelport/redis:7"
    assert services["postgres"]["image"] == "modelport/postgres:15"
    assert services["worker"]["image"] == "modelport:cpu"
    assert services["server"]["ports"][0]["published"] == 18000


# -- Dockerfiles ----------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def ignored(path: str) -> bool:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]  # fmt: skip
    return any(fnmatch.fnmatch(path.rstrip("/"), p) for p in patterns)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_files_the_repository_has(name: str) -> None:
    copies = [shlex.split(args) for word, args in instructions(DEPLOY / name) if word == "COPY"]
    assert copies
    for *sources, _target in copies:
        if sources[0].startswith("--from="):  # the build stage's virtualenv
            assert sources == ["--from=build", "/opt/modelport"]
            continue
        for source in sources:
            assert not source.startswith("--"), f"{name}: COPY {source} needs BuildKit"
            if source == "deploy/build-ca.pe[m]":  # scripts/build-images --ca-cert's, if any
                continue
            assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file"
            assert not ignored(source), f"{name}: COPY {source} is in .dockerignore"
    assert ["deploy/healthcheck.py", "/opt/modelport/healthcheck.py"] in copies
    assert ["deploy/docker-entrypoint.sh", "/opt/modelport/docker-entrypoint.sh"] in copies


def pinned(lock: Path) -> dict[str, str]:
    lines = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    assert len(pins) == len(lines), f"{lock.name}: a line without == or twice the same name"
    return pins


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        if "platform_machine != 'x86_64'" in requirement:
            continue
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        names.add(name.lower().replace("_", "-"))
    return names


@pytest.mark.parametrize(("name", "lock", "extras"), [
    ("Dockerfile", "requirements-cpu.txt", {"postgres", "s3", "kubernetes"}),
    ("Dockerfile.cuda", "requirements-cuda.txt", {"postgres", "s3", "gpu", "kubernetes"}),
])  # fmt: skip
def test_dockerfile_installs_pinned_versions_of_what_modelport_needs(
    name: str, lock: str, extras: set[str]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runs = " ".join(args for word, args in instructions(DEPLOY / name) if word == "RUN")
    assert f"pip install --no-deps -r requirements-{lock.split('-')[1]}" in runs
    assert "pip install --no-deps ." in runs
    assert "pip uninstall -y pip setuptools" in runs  # no build tools left behind
    pins = pinned(DEPLOY / lock)
    wanted = requirement_names(project["dependencies"])
    for extra in extras:
        wanted |= requirement_names(project["optional-dependencies"][extra])
    if "gpu" in extras:  # onnxruntime-gpu replaces onnxruntime (README, "GPUs")
        wanted.remove("onnxruntime")
        assert "onnxruntime" not in pins
        assert any(p.startswith("nvidia-cudnn") for p in pins)
    assert wanted <= set(pins), wanted - set(pins)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_modelport_as_a_user(name: str) -> None:
    steps = instructions(DEPLOY / name)
    settings = dict(steps)  # the last of each instruction: the final stage's
    assert settings["ENTRYPOINT"] == '["/opt/modelport/docker-entrypoint.sh"]'
    assert settings["CMD"] == '["serve", "/models", "--host", "0.0.0.0"]'
    assert settings["USER"] == "modelport"
    assert settings["EXPOSE"].split() == ["8000", "8001"]
    assert settings["HEALTHCHECK"].endswith('CMD ["python", "/opt/modelport/healthcheck.py"]')
    # The folder a task-files volume takes its owner from (compose.yaml, stack.yaml).
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "install -d -o modelport -g modelport /var/lib/modelport-files" in runs
    assert steps[0] == ("ARG", "BASE=python:3.11-slim")
    assert [args for word, args in steps if word == "FROM"] == ["${BASE} AS build", "${BASE}"]
    assert os.access(DEPLOY / "docker-entrypoint.sh", os.X_OK)


# -- the entrypoint, with a stand-in modelport that prints its arguments ------------------


def entrypoint(*args: str, env: Mapping[str, str] | None = None, tmp: Path) -> list[str]:
    stub = tmp / "bin" / "modelport"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(
        '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\necho "gpus=${MODELPORT_TASK_GPUS:-}"\n'
    )
    stub.chmod(0o755)
    done = subprocess.run(
        [str(DEPLOY / "docker-entrypoint.sh"), *args], capture_output=True, text=True,
        timeout=10, env={"PATH": f"{stub.parent}:/usr/bin:/bin", **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_entrypoint_runs_modelport_and_the_upstream_images_commands(tmp_path: Path) -> None:
    assert entrypoint(tmp=tmp_path)[:-1] == []
    assert entrypoint("serve", "/models", tmp=tmp_path)[:-1] == ["serve", "/models"]
    triton = ["tritonserver", "--model-repository=/models", "--log-verbose=1"]
    assert entrypoint(*triton, tmp=tmp_path)[:-1] == triton
    tfs = ["tensorflow_model_server", "--model_base_path=/m/a", "--model_name=a"]
    assert entrypoint(*tfs, tmp=tmp_path)[:-1] == tfs


def test_entrypoint_takes_tf_serving_s_flags_as_its_image_does(tmp_path: Path) -> None:
    head = ["tensorflow_model_server", "--port=8500", "--rest_api_port=8501"]
    assert entrypoint("--enable_batching", tmp=tmp_path)[:-1] == [
        *head, "--model_name=model", "--model_base_path=/models/model", "--enable_batching"
    ]  # fmt: skip
    env = {"MODEL_NAME": "resnet", "MODEL_BASE_PATH": "/srv/models"}
    assert entrypoint("--rest_api_port=9000", env=env, tmp=tmp_path)[:-1] == [
        *head, "--model_name=resnet", "--model_base_path=/srv/models/resnet",
        "--rest_api_port=9000",
    ]  # fmt: skip
    for config in (["--model_config_file=/c/models.config"], ["--model_config_file", "/c/m"]):
        assert entrypoint("--enable_batching", *config, env=env, tmp=tmp_path)[:-1] == [
            *head, "--enable_batching", *config
        ]  # fmt: skip
    # Each flag the image adds parses with modelport's own parser, which takes the last.
    from modelport.cli.tensorflow_model_server import tensorflow_model_server_settings

    args = entrypoint("--rest_api_port=9000", env=env, tmp=tmp_path)[1:-1]
    assert tensorflow_model_server_settings(args, environ={}, config=None).settings.port == 9000


def test_entrypoint_gives_a_swarm_replica_s_gpu_its_task_slot(tmp_path: Path) -> None:
    assert entrypoint("worker", env={"DOCKER_RESOURCE_GPU": "1"}, tmp=tmp_path)[-1] == "gpus=1"
    mine = {"DOCKER_RESOURCE_GPU": "1", "MODELPORT_TASK_GPUS": "0"}
    assert entrypoint("worker", env=mine, tmp=tmp_path)[-1] == "gpus=0"


# -- the health check, against a real server and a real worker ------------------------------


def healthcheck(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30,
        env={**os.environ, **env}, cwd=DEPLOY,
    )  # fmt: skip


def test_healthcheck_asks_the_server_if_it_is_ready(
    server: str, free_port: Callable[[], int]
) -> None:
    port = server.rsplit(":", 1)[1]
    assert healthcheck(env={"MODELPORT_PORT": port}).returncode == 0
    down = free_port()
    done = healthcheck(env={"MODELPORT_PORT": str(down)})
    assert done.returncode == 1
    assert f"unhealthy: http://127.0.0.1:{down}/v2/health/ready" in done.stderr


def test_healthcheck_looks_for_the_worker_s_heartbeat(
    tmp_path: Path, repository: Path, redis_server: RedisServer, worker_factory: StartWorker,
    free_port: Callable[[], int],
) -> None:  # fmt: skip
    worker_factory(repository, "gpu-host-1", args=("--slots", "0", "--models", "add_sub"))
    assert healthcheck("worker", redis_server.url, "gpu-host-1", env={}).returncode == 0
    done = healthcheck("worker", redis_server.url, "gpu-host-9", env={})
    assert done.returncode == 1
    assert "no heartbeat of worker 'gpu-host-9'" in done.stderr
    away = f"redis://:secret@127.0.0.1:{free_port()}/0"
    done = healthcheck("worker", away, "gpu-host-1", env={})
    assert done.returncode == 1
    assert f"unhealthy: Redis at {away.replace(':secret@', '***@')}: " in done.stderr
    assert "secret" not in done.stderr
    usage = healthcheck("worker", redis_server.url, env={})
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
