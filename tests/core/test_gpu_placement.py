"""GPU placement: which device each instance gets, which GPUs the server finds, and what
a model that needs a GPU the server lacks says.

The test machines have no GPU. A declared device list (a :class:`Gpus`, or the ``gpus``
setting) stands in for discovered GPUs; the fake runtime stands in for a framework that
would run on them; a fake ``pynvml`` (tests/support/nvml_stub) stands in for NVML, which cannot
run without a GPU and its driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelport.core.caller import LoopModelCaller
from modelport.core.instances import NO_GPUS, Gpus, devices_for
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeContext
from modelport.core.service import InferenceService
from modelport.errors import ModelUnavailable
from modelport.observability.gpus import Nvml, discover_gpus, parse_gpu_ids
from modelport.runtimes.fake import FakeRuntime
from modelport.runtimes.onnx import OnnxRuntime, choose_providers
from modelport.settings import Settings, SettingsError
from modelport.spec import ModelSpec
from modelport.tensors import InferenceRequest, Tensor
from support.builders import mlp_onnx, write_model
from support.nvml_fixtures import NO_DRIVER, TWO_GPUS, fake_nvml_env, use_fake_nvml, without_nvml

TWO = Gpus((0, 1), "declared by the test")
FAKE_IO = (
    "inputs: [{name: x, datatype: FP32, shape: [2]}]\n"
    "outputs: [{name: y, datatype: FP32, shape: [2]}]\n"
)


def _spec(**instances: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "runtime": "fake", "instances": instances})


# -- devices_for, on declared device lists ------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "gpus", "devices"),
    [
        ({"count": 2}, TWO, ["cpu", "cpu"]),  # device cpu (the default) ignores the GPUs
        ({"count": 4, "device": "gpu"}, TWO, ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]),
        ({"count": 3, "device": "gpu", "gpus": [1]}, TWO, ["cuda:1"] * 3),
        ({"count": 3, "device": "gpu", "gpus": [1, 1, 0]}, TWO, ["cuda:1", "cuda:0", "cuda:1"]),
        ({"count": 2, "device": "gpu"}, Gpus((3,), "declared"), ["cuda:3", "cuda:3"]),
        ({"count": 2, "device": "auto"}, NO_GPUS, ["cpu", "cpu"]),
        ({"count": 3, "device": "auto"}, TWO, ["cuda:0", "cuda:1", "cuda:0"]),
        ({"count": 2, "device": "auto", "gpus": [1, 5]}, TWO, ["cuda:1", "cuda:1"]),
        ({"count": 2, "device": "auto", "gpus": [5]}, TWO, ["cpu", "cpu"]),
    ],
)
def test_devices_for_spreads_copies_over_the_gpus(
    instances: dict[str, Any], gpus: Gpus, devices: list[str]
) -> None:
    assert devices_for(_spec(**instances), gpus) == devices


def test_a_gpu_model_without_gpus_says_how_to_fix_it() -> None:
    with pytest.raises(ModelUnavailable) as caught:
        devices_for(_spec(device="gpu"), Gpus((), "nvidia-ml-py is not installed"))
    message = caught.value.message
    assert "model 'm' needs a GPU (instances.device: gpu)" in message
    assert "this server has none (nvidia-ml-py is not installed)" in message
    assert "pip install 'modelport[gpu]'" in message and "MODELPORT_GPUS=0,1" in message
    assert "instances.device: auto" in message


def test_asking_for_gpus_the_server_lacks_names_both_lists() -> None:
    with pytest.raises(ModelUnavailable) as caught:
        devices_for(_spec(device="gpu", gpus=[1, 2, 3]), TWO)
    message = caught.value.message
    assert "asks for GPUs [1, 2, 3] (instances.gpus)" in message
    assert "this server has GPUs [0, 1] (declared by the test), so not [2, 3]" in message
    assert "leave instances.gpus out" in message


# -- ONNX Runtime's providers on a GPU -----------------------------------------------------
# The onnxruntime here is the CPU-only wheel (onnxruntime-gpu would replace it), so the
# choice is tested on the provider lists onnxruntime-gpu reports, and a session that lost
# its CUDA provider is a stand-in object.

WITH_CUDA = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_provider_on_the_instance_gpu() -> None:
    choice = choose_providers("m", "cuda:1", "gpu", WITH_CUDA)
    assert choice.names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choice.options == [{"device_id": "1"}, {}]
    assert choose_providers("m", "cuda:0", "auto", WITH_CUDA).options[0] == {"device_id": "0"}
    cpu_only = choose_providers("m", "cpu", "auto", WITH_CUDA)
    assert (cpu_only.names, cpu_only.options) == (["CPUExecutionProvider"], [{}])


def test_no_cuda_provider_says_what_to_install() -> None:
    with pytest.raises(ModelUnavailable) as caught:
        choose_providers("m", "cuda:1", "gpu", ["CPUExecutionProvider"])
    message = caught.value.message
    assert "model 'm' is placed on cuda:1 (instances.device: gpu)" in message
    assert "no CUDA provider (it has CPUExecutionProvider)" in message
    assert "pip install 'modelport[gpu]'" in message and "pip uninstall onnxruntime" in message
    settled = choose_providers("m", "cuda:1", "auto", ["CPUExecutionProvider"])
    assert settled.names == ["CPUExecutionProvider"]


class _SessionWithoutCuda:
    """What ONNX Runtime builds when its CUDA provider fails to start (no CUDA libraries):
    a session on the CPU alone."""

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


@pytest.mark.parametrize("device", ["gpu", "auto"])
def test_a_cuda_provider_that_did_not_start(tmp_path: Path, device: str) -> None:
    spec = _spec(device=device)
    unopened = InferenceService(ModelRepository(tmp_path), {}, name="modelport", version="test")
    context = RuntimeContext(
        spec, 1, tmp_path, tmp_path / "1", 0, "cuda:0", LoopModelCaller(unopened)
    )
    runtime = OnnxRuntime(context)
    runtime.session = _SessionWithoutCuda()
    choice = choose_providers("m", "cuda:0", device, WITH_CUDA)
    if device == "auto":
        runtime._check_cuda_started(choice)  # settles for the CPU, with a warning
        assert runtime.session is not None
        return
    with pytest.raises(ModelUnavailable, match=r"CUDA provider did not start on cuda:0"):
        runtime._check_cuda_started(choice)
    assert runtime.session is None


# -- which GPUs the server finds ----------------------------------------------------------


def test_declared_gpus_win_over_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, TWO_GPUS)
    nvml = Nvml.open()
    assert nvml.available
    assert discover_gpus("3, 1,3", nvml) == Gpus((3, 1), "declared by the gpus setting")
    assert discover_gpus("none", nvml) == Gpus((), "the gpus setting says none")
    assert discover_gpus("", nvml) == Gpus((0, 1), "found by NVML")


def test_no_gpus_without_nvidia_ml_py_or_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    without_nvml(monkeypatch)
    nvml = Nvml.open()
    assert not nvml.available and nvml.read() == []
    assert (
        discover_gpus("", nvml).source == "nvidia-ml-py is not installed, so NVML cannot be asked"
    )

    use_fake_nvml(monkeypatch, TWO_GPUS, init_error=NO_DRIVER)
    gpus = discover_gpus("", Nvml.open())
    assert gpus.ids == ()
    assert gpus.source == f"NVML did not start (no NVIDIA driver here?): {NO_DRIVER}"

    use_fake_nvml(monkeypatch, [])
    assert discover_gpus("", Nvml.open()) == Gpus((), "NVML finds no GPU")


def test_the_gpus_setting_is_checked() -> None:
    assert Settings.load(environ={"MODELPORT_GPUS": "0, 2"}).gpus == "0,2"
    assert Settings.load(environ={"MODELPORT_GPUS": "None"}).gpus == "none"
    assert parse_gpu_ids("0,2") == (0, 2) and parse_gpu_ids("none") == ()
    assert parse_gpu_ids("") is None
    with pytest.raises(SettingsError, match=r"gpus: .*ids like '0,1', or 'none'.*MODELPORT_GPUS"):
        Settings.load(environ={"MODELPORT_GPUS": "cuda:0"})


# -- the registry places instances, or says why not ---------------------------------------


@pytest.fixture
async def serve_on(tmp_path: Path) -> AsyncIterator[Callable[[Gpus], Awaitable[InferenceService]]]:
    """``await serve_on(gpus)``: a service over ``tmp_path/models`` placing on ``gpus``."""
    services: list[InferenceService] = []

    async def start(gpus: Gpus) -> InferenceService:
        repository = ModelRepository(tmp_path / "models")
        service = InferenceService(
            repository, {"fake": FakeRuntime}, name="modelport", version="test", gpus=gpus
        )
        services.append(service)
        await service.open()
        return service

    yield start
    for service in services:
        await service.close()


async def test_instances_are_placed_on_the_declared_gpus(
    tmp_path: Path, serve_on: Callable[[Gpus], Awaitable[InferenceService]]
) -> None:
    spec = f"runtime: fake\nmax_batch_size: 4\ninstances: {{count: 4, device: gpu}}\n{FAKE_IO}"
    write_model(tmp_path / "models", "gpu", spec, {"1/README": "fake"})
    service = await serve_on(TWO)
    loaded = service.get_version("gpu")
    placed = ("cuda:0", "cuda:1", "cuda:0", "cuda:1")
    assert loaded.devices == placed
    runtimes = [inst.runtime for inst in loaded.instances]
    assert all(isinstance(r, FakeRuntime) for r in runtimes)
    assert tuple(r.context.device for r in runtimes if isinstance(r, FakeRuntime)) == placed
    x = np.array([[1.0, 2.0]], np.float32)
    response = await service.infer(InferenceRequest("gpu", (Tensor("x", "FP32", x),)))
    assert response.outputs[0].data.tolist() == x.tolist()


async def test_a_gpu_model_on_a_server_without_gpus_is_unavailable(
    tmp_path: Path, serve_on: Callable[[Gpus], Awaitable[InferenceService]]
) -> None:
    models = tmp_path / "models"
    write_model(models, "gpu", f"runtime: fake\ninstances: {{device: gpu}}\n{FAKE_IO}", {"1/R": ""})
    write_model(models, "cpu", f"runtime: fake\n{FAKE_IO}", {"1/README": "fake"})
    service = await serve_on(Gpus((), "the gpus setting says none"))
    rows = {row.name: row for row in service.index()}
    assert rows["gpu"].state == "UNAVAILABLE"
    assert "needs a GPU (instances.device: gpu)" in rows["gpu"].reason
    assert "(the gpus setting says none)" in rows["gpu"].reason
    assert rows["cpu"].state == "READY"


# -- a real server on this GPU-less machine -----------------------------------------------


def _rows(n: int) -> dict[str, Any]:
    """A v2 JSON request of ``n`` rows for the 4 -> 3 MLP."""
    tensor = {"name": "INPUT0", "shape": [n, 4], "datatype": "FP32", "data": [1.0] * 4 * n}
    return {"inputs": [tensor]}


async def test_server_without_gpus_serves_the_others(tmp_path: Path, server_factory: Any) -> None:
    """A fake NVML that cannot start stands for this machine's missing driver (the same
    on any host the test runs on): the GPU model is UNAVAILABLE with the reason, an
    ``auto`` model serves on the CPU, and so does a CPU model."""
    models = tmp_path / "models"
    write_model(models, "needs-gpu", "runtime: onnx\ninstances: {device: gpu, gpus: [0]}\n")
    write_model(models, "auto", "runtime: onnx\nmax_batch_size: 8\ninstances: {device: auto}\n")
    write_model(models, "cpu", "runtime: onnx\nmax_batch_size: 8\n")
    for name in ("needs-gpu", "auto", "cpu"):
        mlp_onnx(models / name / "1" / "model.onnx", sizes=(4, 3))
    proc = server_factory(env=fake_nvml_env([], init_error=NO_DRIVER), repo=models)
    async with httpx.AsyncClient(base_url=proc.url, timeout=10) as client:
        index = (await client.post("/v2/repository/index")).json()
        rows = {row["name"]: row for row in index}
        assert rows["needs-gpu"]["state"] == "UNAVAILABLE"
        reason = rows["needs-gpu"]["reason"]
        assert "model 'needs-gpu' needs a GPU (instances.device: gpu)" in reason
        assert f"NVML did not start (no NVIDIA driver here?): {NO_DRIVER}" in reason
        assert "MODELPORT_GPUS=0,1" in reason
        # Not ready (Triton's 503 for ready: false), and a request says why.
        assert (await client.get("/v2/models/needs-gpu/ready")).status_code == 503
        infer = await client.post("/v2/models/needs-gpu/infer", json=_rows(1))
        assert infer.status_code == 503 and "needs a GPU" in infer.json()["error"]
        for name in ("auto", "cpu"):
            assert rows[name]["state"] == "READY", rows[name]
            assert (await client.get(f"/v2/models/{name}/ready")).status_code == 200
            answer = await client.post(f"/v2/models/{name}/infer", json=_rows(2))
            assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [2, 3]
        metrics = (await client.get("/metrics")).text
        assert 'modelport_instances{device="cpu",model="auto",version="1"} 1.0' in metrics
        assert "modelport_gpu_" not in metrics
