"""The container runtime's options, and runs on the real Docker engine."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from modelport.runtimes.container import ContainerJob, ContainerRuntime, run_options
from modelport.spec import ContainerSpec


def _job(tmp_path: Path, spec: ContainerSpec, gpu: int | None = None) -> ContainerJob:
    model, input_dir, output_dir = (tmp_path / n for n in ("model", "input", "output"))
    for folder in (model, input_dir, output_dir):
        folder.mkdir(exist_ok=True)
    output_dir.chmod(0o777)
    return ContainerJob(
        task_id="t1",
        spec=spec,
        model_dir=model,
        input_dir=input_dir,
        output_dir=output_dir,
        log_path=tmp_path / "log.txt",
        gpu=gpu,
        parameters={"a": 1},
    )


def test_options_for_a_gpu_slot(tmp_path: Path) -> None:
    # No GPU on these machines: only the request sent to the engine is checked.
    spec = ContainerSpec(image="x", gpus=1, cpus=2, memory="1g")
    options = run_options(_job(tmp_path, spec, gpu=3), uid=0)
    request = options["device_requests"][0]
    assert request["DeviceIDs"] == ["3"] and request["Capabilities"] == [["gpu"]]
    assert options["environment"]["NVIDIA_VISIBLE_DEVICES"] == "3"
    assert options["nano_cpus"] == 2_000_000_000 and options["mem_limit"] == "1g"
    assert options["network_mode"] == "none" and options["user"] == "65534:65534"
    assert options["volumes"][str(tmp_path / "model")] == {"bind": "/model", "mode": "ro"}
    cpu = run_options(_job(tmp_path, ContainerSpec(image="x", network=True)), uid=0)
    assert cpu["device_requests"] == [] and "network_mode" not in cpu
    assert cpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    with pytest.raises(ValueError, match="has none"):
        run_options(_job(tmp_path, spec, gpu=None), uid=0)


def test_options_for_images_built_for_the_zip_task_cluster_server(tmp_path: Path) -> None:
    spec = ContainerSpec(image="x", shm_size="2G", network="bridge", user="image")
    options = run_options(_job(tmp_path, spec), uid=1000)
    assert options["shm_size"] == "2g" and "network_mode" not in options
    assert "user" not in options and "ipc_mode" not in options
    shared = run_options(_job(tmp_path, ContainerSpec(image="x", ipc="host", user="7:8")))
    assert shared["ipc_mode"] == "host" and shared["user"] == "7:8"
    assert "shm_size" not in shared and shared["network_mode"] == "none"
    for bad in ({"user": "root"}, {"network": "host"}, {"shm_size": "lots"}):
        with pytest.raises(ValueError):
            ContainerSpec(image="x", **bad)  # type: ignore[arg-type]


class _Control:
    def __init__(self) -> None:
        self.stop = threading.Event()
        self.seen: list[float] = []

    def cancelled(self) -> bool:
        return self.stop.is_set()

    def progress(self, value: float) -> None:
        self.seen.append(value)


def test_runs_report_exit_codes_progress_and_cancel(tmp_path: Path, docker_image: str) -> None:
    runtime = ContainerRuntime(poll_s=0.05)
    script = "echo 0.25 > /output/.progress; sleep 0.5; echo out; echo err >&2; exit 7"
    spec = ContainerSpec(image=docker_image, command=("sh", "-c", script))
    control = _Control()
    (tmp_path / "a").mkdir()
    result = runtime.run(_job(tmp_path / "a", spec), control)
    assert (result.outcome, result.exit_code) == ("exited", 7)
    assert 0.25 in control.seen
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "out" in log and "err" in log

    (tmp_path / "b").mkdir()
    sleeper = ContainerSpec(image=docker_image, command=("sleep", "30"))
    control = _Control()
    threading.Timer(0.5, control.stop.set).start()
    assert runtime.run(_job(tmp_path / "b", sleeper), control).outcome == "cancelled"

    (tmp_path / "c").mkdir()
    missing = ContainerSpec(image="modelport-test/absent:1", pull="never", command="true")
    result = runtime.run(_job(tmp_path / "c", missing), _Control())
    assert result.outcome == "error" and "pull: never" in result.reason
