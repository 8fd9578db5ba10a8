"""GPU utilisation and memory on /metrics, read from NVML at scrape time.

NVML cannot run without an NVIDIA GPU and driver, which the test machines lack: a fake
``pynvml`` (tests/support/nvml_stub, through tests/support/nvml_fixtures.py) describes two
GPUs in its
place, in a real server process and in this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelport.core.repository import ModelRepository
from modelport.core.service import InferenceService
from modelport.observability.gpus import Nvml
from modelport.observability.metrics import metrics_registry
from support.builders import write_model
from support.nvml_fixtures import NO_DRIVER, TWO_GPUS, fake_nvml_env, use_fake_nvml, without_nvml

H100 = "NVIDIA H100 80GB HBM3"


def _gpu_samples(text: str) -> dict[tuple[str, str], float]:
    """(metric, gpu) -> value of every modelport_gpu_* sample in a /metrics answer; each
    sample also names its GPU's model."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("modelport_gpu_"):
                assert sample.labels["name"] == H100, sample
                found[(sample.name, sample.labels["gpu"])] = sample.value
    return found


TWO_GPU_SAMPLES = {
    ("modelport_gpu_utilization_percent", "0"): 37.0,
    ("modelport_gpu_utilization_percent", "1"): 0.0,
    ("modelport_gpu_memory_used_bytes", "0"): 12 * 2**30,
    ("modelport_gpu_memory_used_bytes", "1"): 512 * 2**20,
    ("modelport_gpu_memory_total_bytes", "0"): 80 * 2**30,
    ("modelport_gpu_memory_total_bytes", "1"): 80 * 2**30,
}


def _scrape(tmp_path: Path, nvml: Nvml) -> str:
    """/metrics of a service with no models, as the server would answer it."""
    service = InferenceService(ModelRepository(tmp_path), {}, name="modelport", version="test")
    return generate_latest(metrics_registry(service, nvml)).decode()


def test_gpu_gauges_from_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, TWO_GPUS)
    text = _scrape(tmp_path, Nvml.open())
    assert _gpu_samples(text) == TWO_GPU_SAMPLES
    assert "# TYPE modelport_gpu_memory_used_bytes gauge" in text


def test_a_gpu_that_does_not_answer_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_nvml(monkeypatch, [{**TWO_GPUS[0], "lost": True}, TWO_GPUS[1]])
    text = _scrape(tmp_path, Nvml.open())
    assert _gpu_samples(text) == {k: v for k, v in TWO_GPU_SAMPLES.items() if k[1] == "1"}


@pytest.mark.parametrize("absent", ["not installed", "no driver"])
def test_no_gpu_metrics_without_nvml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absent: str
) -> None:
    if absent == "not installed":
        without_nvml(monkeypatch)
    else:
        use_fake_nvml(monkeypatch, TWO_GPUS, init_error=NO_DRIVER)
    text = _scrape(tmp_path, Nvml.open())
    assert "modelport_model_ready" in text  # the rest of /metrics is still there
    assert "modelport_gpu_" not in text


def test_server_places_on_nvml_gpus_and_exports_them(tmp_path: Path, server_factory: Any) -> None:
    """A real server whose NVML (the fake) finds two GPUs, no ``gpus`` setting: a model
    with ``device: gpu`` is placed on both, and /metrics carries both GPUs' gauges."""
    io = (
        "inputs: [{name: x, datatype: FP32, shape: [2]}]\n"
        "outputs: [{name: y, datatype: FP32, shape: [2]}]\n"
    )
    spec = f"runtime: fake\nmax_batch_size: 4\ninstances: {{count: 3, device: gpu}}\n{io}"
    write_model(tmp_path, "on-gpus", spec, {"1/README": "the fake runtime needs no files"})
    proc = server_factory(env=fake_nvml_env(TWO_GPUS), repo=tmp_path)
    metrics = httpx.get(proc.url + "/metrics", timeout=10).text
    assert _gpu_samples(metrics) == TWO_GPU_SAMPLES
    instances = 'modelport_instances{{device="cuda:{}",model="on-gpus",version="1"}}'
    assert instances.format(0) + " 2.0" in metrics
    assert instances.format(1) + " 1.0" in metrics
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    answer = httpx.post(proc.url + "/v2/models/on-gpus/infer", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [1.0, 2.0]
