"""modelport:cpu as built by scripts/build-images, run with ``docker run``: healthy by
its own check, answering an inference, running a container task through the host's
Docker socket, as a user that is not root; and its entrypoint taking the commands of
compose files written for NVIDIA's tritonserver image and for tensorflow/serving.
modelport:cuda is built too and checked for what this machine can check without a GPU:
every library of ONNX Runtime's CUDA provider resolves in the image but the driver's
(libcuda.so.1, which the host's NVIDIA Container Toolkit mounts); a GPU itself is
checked on a machine that has one.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from support.image_fixtures import ROOT, build_images, docker, onnx_repository, running
from support.task_fixtures import submit_ok, wait_for

pytestmark = pytest.mark.timeout(600)

ADD_SUB = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
}


def add_sub(url: str, model: str = "add_sub") -> list[float]:
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=ADD_SUB, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    return list(outputs["OUTPUT0"])


def test_runs_as_a_user_with_pinned_packages_and_no_build_tools(
    service_images: tuple[str, str, str],
) -> None:
    image = service_images[0]
    who = docker("run", "--rm", "--entrypoint", "id", image, "-u")
    assert who.stdout.strip() == "10001"
    script = (
        "import importlib.metadata as m, importlib.util as u;"
        "print(m.version('onnxruntime'), m.version('fastapi'), u.find_spec('pip'))"
    )
    found = docker("run", "--rm", "--entrypoint", "python", image, "-c", script)
    assert found.returncode == 0, found.stderr
    lock = (ROOT / "deploy" / "requirements-cpu.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lock if "==" in line)
    assert found.stdout.split() == [pins["onnxruntime"], pins["fastapi"], "None"]
    for tool in ("gcc", "cc", "make", "pip", "pip3"):
        found = docker("run", "--rm", "--entrypoint", "sh", image, "-c", f"command -v {tool}")
        assert (found.returncode, found.stdout) == (127, ""), tool
    # The build's CA bundle stayed in the build stage.
    assert docker("run", "--rm", "--entrypoint", "ls", image, "/build").returncode != 0


def test_serves_an_inference_and_runs_a_task(
    service_images: tuple[str, str, str], task_repository: Path, tmp_path: Path
) -> None:
    onnx_repository(task_repository)
    data = tmp_path / "data"
    data.mkdir()
    # Task containers are started by the host's engine, which mounts host paths: the
    # repository and the data folder are at the same path inside (as compose.yaml does),
    # and root uses the socket (SECURITY.md).
    args = [
        "--user=root", "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{task_repository}:{task_repository}:ro", "-v", f"{data}:{data}",
        "-e", f"MODELPORT_DATA_DIR={data}", "-e", "MODELPORT_TASKS_OPEN=true",
    ]  # fmt: skip
    command = ["serve", str(task_repository), "--host", "0.0.0.0"]
    with running(service_images[0], args=args, command=command) as server:
        url = server.url()
        assert add_sub(url) == [2, 3, 4, 5]
        task_id = submit_ok(url, "upper", {"a.txt": b"hello image"})
        record = wait_for(url, task_id, {"succeeded", "failed"}, timeout=60)
        assert record["status"] == "succeeded", record
        output = httpx.get(f"{url}/api/tasks/{task_id}/output", timeout=30)
        assert output.status_code == 200
        with zipfile.ZipFile(io.BytesIO(output.content)) as archive:
            assert archive.read("a.txt") == b"HELLO IMAGE"
            assert archive.read("model.txt") == b"upper v1"


def test_a_tritonserver_command_runs_modelport_tritonserver(
    service_images: tuple[str, str, str], tmp_path: Path
) -> None:
    models = onnx_repository(tmp_path / "models")
    # The command of a compose file written for nvcr.io/nvidia/tritonserver, as it is.
    command = ["tritonserver", "--model-repository=/models", "--strict-model-config=false"]
    args = ["-v", f"{models}:/models:ro"]
    with running(service_images[0], args=args, command=command, ports=(8000,)) as server:
        url = server.url(8000)
        assert add_sub(url) == [2, 3, 4, 5]
        config = httpx.get(f"{url}/v2/models/add_sub/config", timeout=10)
        assert config.status_code == 200, config.text


@pytest.mark.parametrize("config_file", [False, True], ids=["model-base-path", "config-file"])
def test_tf_serving_flags_run_tensorflow_model_server_as_its_image_does(
    service_images: tuple[str, str, str], tmp_path: Path, config_file: bool
) -> None:
    models = onnx_repository(tmp_path / "models")
    args = ["-v", f"{models}:/models:ro"]
    if config_file:
        # With --model_config_file the image's --model_name and --model_base_path are not
        # given (TF Serving ignores them), and the file names the models.
        (models / "models.config").write_text(
            'model_config_list { config { name: "adder" base_path: "/models/add_sub" } }\n'
        )
        command, name = ["--model_config_file=/models/models.config"], "adder"
    else:
        # tensorflow/serving's environment: MODEL_NAME under MODEL_BASE_PATH (/models).
        args += ["-e", "MODEL_NAME=add_sub"]
        command, name = ["--file_system_poll_wait_seconds=0"], "add_sub"
    # The health check asks the HTTP port modelport reads from its settings: 8501 here.
    args += ["-e", "MODELPORT_PORT=8501"]
    with running(service_images[0], args=args, command=command, ports=(8501,)) as server:
        url = server.url(8501)
        status = httpx.get(f"{url}/v1/models/{name}", timeout=10).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE", status
        body = {"inputs": {"INPUT0": [[1, 2, 3, 4]], "INPUT1": [[1, 1, 1, 1]]}}
        answer = httpx.post(f"{url}/v1/models/{name}:predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"]["OUTPUT0"] == [[2, 3, 4, 5]]


def test_the_cuda_image_holds_everything_onnx_runtime_s_cuda_provider_loads(
    service_images: tuple[str, str, str],
) -> None:
    build_images("cuda")
    script = (
        "import onnxruntime as ort, pathlib;"
        "print(','.join(ort.get_available_providers()));"
        "print(pathlib.Path(ort.__file__).parent / 'capi' / 'libonnxruntime_providers_cuda.so')"
    )
    found = docker("run", "--rm", "--entrypoint", "python", "modelport:cuda", "-c", script)
    assert found.returncode == 0, found.stderr
    providers, library = found.stdout.split()
    assert "CUDAExecutionProvider" in providers.split(",")
    linked = docker("run", "--rm", "--entrypoint", "ldd", "modelport:cuda", library)
    assert linked.returncode == 0, linked.stderr
    missing = {line.split()[0] for line in linked.stdout.splitlines() if "not found" in line}
    assert missing == {"libcuda.so.1"}, linked.stdout
    wheels = "/opt/modelport/lib/python3.11/site-packages/nvidia/"
    for name in ("libcublasLt.so", "libcublas.so", "libcudart.so", "libcurand.so"):
        assert f" => {wheels}" in next(x for x in linked.stdout.splitlines() if name in x), name
    # cuDNN and cuFFT are opened at run time: the loader's cache finds them in the wheels.
    cache = docker("run", "--rm", "--entrypoint", "ldconfig", "modelport:cuda", "-p")
    for name in ("libcudnn.so.9", "libcufft.so"):
        assert f"{name}" in cache.stdout, name
    assert docker("run", "--rm", "--entrypoint", "id", "modelport:cuda", "-u").stdout == "10001\n"


def test_redis_and_postgres_images_built_from_debian_s_packages(
    service_images: tuple[str, str, str],
) -> None:
    _, redis_image, postgres_image = service_images
    # As compose.yaml runs them: redis-server's flags as the command, a password always.
    redis = docker("run", "-d", "-e", "REDISCLI_AUTH=secret", redis_image,
                   "redis-server", "--appendonly", "yes", "--requirepass", "secret")  # fmt: skip
    postgres = docker("run", "-d", "-e", "POSTGRES_USER=modelport", "-e",
                      "POSTGRES_PASSWORD=secret", "-e", "POSTGRES_DB=modelport",
                      postgres_image)  # fmt: skip
    names = [redis.stdout.strip(), postgres.stdout.strip()]
    try:
        assert redis.returncode == postgres.returncode == 0, redis.stderr + postgres.stderr
        ping = docker("exec", names[0], "redis-cli", "ping")
        for _ in range(100):
            ready = docker("exec", names[1], "pg_isready", "-U", "modelport", "-d", "modelport")
            if ready.returncode == 0 and ping.stdout.strip() == "PONG":
                break
            time.sleep(0.2)
            ping = docker("exec", names[0], "redis-cli", "ping")
        assert ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
        assert ready.returncode == 0, docker("logs", names[1]).stderr
        # Over TCP with the password, as modelport's task store connects.
        psql = ["psql", "-h", "127.0.0.1", "-U", "modelport", "-d", "modelport", "-tAc"]
        query = docker("exec", "-e", "PGPASSWORD=secret", names[1], *psql, "select current_user")
        assert query.stdout.strip() == "modelport", query.stderr
        wrong = docker("exec", "-e", "PGPASSWORD=wrong", names[1], *psql, "select 1")
        assert "password authentication failed" in wrong.stderr
        assert docker("exec", names[0], "id", "-un").stdout.strip() == "redis"
        assert docker("exec", names[1], "id", "-un").stdout.strip() == "postgres"
    finally:
        docker("rm", "-f", "-v", *[n for n in names if n])
