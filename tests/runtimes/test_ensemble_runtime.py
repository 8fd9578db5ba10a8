"""Ensembles declared in model.yaml (``runtime: ensemble``): steps in data order, each
through its own served model, with statistics and metrics for the ensemble and each
step; a step's failure, or a missing step model, named in the error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from modelport.core.repository import ModelRepository
from modelport.core.service import InferenceService
from modelport.errors import InferenceFailed, ModelUnavailable
from modelport.observability.metrics import metrics_registry
from modelport.server.build import RUNTIMES
from modelport.tensors import InferenceRequest, Tensor
from support.builders import add_sub_onnx, write_model

pytestmark = pytest.mark.timeout(30)

Start = Callable[[], Awaitable[InferenceService]]

# (A + B) + (A - B) = 2A; the steps are listed in the reverse of the order they run.
PIPELINE = """\
runtime: ensemble
max_batch_size: 8
inputs:
  - {name: A, datatype: FP32, shape: [4]}
  - {name: B, datatype: FP32, shape: [4]}
outputs: [{name: TWICE_A, datatype: FP32, shape: [4]}]
instances: {count: 4}
ensemble:
  step:
    - model_name: add_sub
      input_map: {INPUT0: sum, INPUT1: difference}
      output_map: {OUTPUT0: TWICE_A}
    - model_name: add_sub
      model_version: 1
      input_map: {INPUT0: A, INPUT1: B}
      output_map: {OUTPUT0: sum, OUTPUT1: difference}
"""

FAILING = """\
runtime: fake
max_batch_size: 8
inputs:
  - {name: INPUT0, datatype: FP32, shape: [4]}
  - {name: INPUT1, datatype: FP32, shape: [4]}
outputs: [{name: OUTPUT0, datatype: FP32, shape: [4]}]
parameters: {fail_with: "the disk is on fire"}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    folder = write_model(
        root, "add_sub", "runtime: onnx\nmax_batch_size: 8\n", {"1/README": "the ONNX file"}
    )
    add_sub_onnx(folder / "1" / "model.onnx")
    write_model(root, "pipeline", PIPELINE, {"1/.keep": ""})
    return root


@pytest.fixture
async def serve(repo: Path) -> AsyncIterator[Start]:
    services: list[InferenceService] = []

    async def start() -> InferenceService:
        service = InferenceService(ModelRepository(repo), RUNTIMES, name="m", version="test")
        services.append(service)
        await service.open()
        return service

    yield start
    for service in services:
        await service.close()


def _request(model: str, rows: int = 2, seed: int = 0) -> tuple[InferenceRequest, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = (rng.random((rows, 4), dtype=np.float32) for _ in range(2))
    return InferenceRequest(model, (Tensor("A", "FP32", a), Tensor("B", "FP32", b))), a


async def test_steps_run_in_data_order_and_each_model_counts_them(serve: Start) -> None:
    service = await serve()
    requests = [_request("pipeline", rows=1 + i % 3, seed=i) for i in range(12)]
    answers = await asyncio.gather(*(service.infer(r) for r, _ in requests))
    for answer, (_, a) in zip(answers, requests, strict=True):
        assert [t.name for t in answer.outputs] == ["TWICE_A"]
        np.testing.assert_allclose(answer.outputs[0].data, 2 * a, rtol=1e-6)
    rows = sum(a.shape[0] for _, a in requests)
    (pipeline,) = service.statistics("pipeline")
    (add_sub,) = service.statistics("add_sub")
    assert pipeline.stats.success.count == 12 and pipeline.stats.inference_count == rows
    # The ensemble's own batcher may merge requests; every batch it ran is one call of
    # each step, and every row went through both.
    assert add_sub.stats.success.count == 2 * pipeline.stats.execution_count
    assert add_sub.stats.inference_count == 2 * rows
    assert service.metadata("pipeline").platform == "ensemble"
    metrics = generate_latest(metrics_registry(service)).decode()
    assert 'modelport_requests_total{model="pipeline",outcome="success",version="1"} 12.0' in (
        metrics
    )
    calls = float(add_sub.stats.success.count)
    assert f'modelport_requests_total{{model="add_sub",outcome="success",version="1"}} {calls}' in (
        metrics
    )


async def test_a_failing_step_fails_the_request_naming_the_step(repo: Path, serve: Start) -> None:
    write_model(repo, "failing", FAILING, {"1/README": "the fake runtime needs no files"})
    yaml = PIPELINE.replace(
        "model_name: add_sub\n      input_map: {INPUT0: sum",
        "model_name: failing\n      input_map: {INPUT0: sum",
    )
    write_model(repo, "pipeline", yaml)
    service = await serve()
    with pytest.raises(InferenceFailed) as caught:
        await service.infer(_request("pipeline")[0])
    assert caught.value.message.startswith("ensemble 'pipeline' step 0 (model 'failing') failed:")
    assert "the disk is on fire" in caught.value.message
    (pipeline,) = service.statistics("pipeline")
    assert pipeline.stats.fail.count == 1


async def test_a_step_model_that_stopped_serving_is_named(serve: Start) -> None:
    service = await serve()
    await service.unload("add_sub")
    with pytest.raises(ModelUnavailable) as caught:
        await service.infer(_request("pipeline")[0])
    assert caught.value.message.startswith("ensemble 'pipeline' step 1 (model 'add_sub') failed:")


async def test_an_ensemble_naming_a_missing_model_is_unavailable(repo: Path, serve: Start) -> None:
    write_model(repo, "pipeline", PIPELINE.replace("model_version: 1\n", "model_version: 3\n"))
    write_model(
        repo,
        "lost",
        PIPELINE.replace(
            "model_name: add_sub\n      model_version", "model_name: nowhere\n      model_version"
        ),
        {"1/.keep": ""},
    )
    service = await serve()
    reasons = {row.name: row.reason for row in service.index() if row.state == "UNAVAILABLE"}
    assert reasons["lost"] == (
        f"model 'lost': ensemble step 1 names model 'nowhere', which is not in the repository "
        f"{repo}; add it, or fix the step's model_name"
    )
    assert reasons["pipeline"].startswith(
        "model 'pipeline': ensemble step 1 names version 3 of model 'add_sub', which serves "
        "versions [1]"
    )


async def test_an_ensemble_may_not_take_larger_batches_than_a_step(
    repo: Path, serve: Start
) -> None:
    write_model(repo, "pipeline", PIPELINE.replace("max_batch_size: 8", "max_batch_size: 16"))
    service = await serve()
    (row,) = service.model_status("pipeline")
    assert row.state == "UNAVAILABLE"
    assert "takes batches of up to 16 (max_batch_size), but model 'add_sub' only 8" in row.reason
