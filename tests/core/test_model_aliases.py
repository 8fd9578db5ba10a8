"""Aliases in model.yaml: a model answers to other names wherever a model is named,
resolved once in the core; two models claiming one name both stop serving, with a
reason naming both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from modelport.core.entries import ModelState
from modelport.core.service import InferenceService
from modelport.errors import ModelNotFound, ModelUnavailable
from modelport.tensors import InferenceRequest, Tensor
from support.builders import write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture


def _yaml(*aliases: str) -> str:
    return f"""\
runtime: fake
inputs: [{{name: INPUT0, datatype: FP32, shape: [2]}}]
outputs: [{{name: OUTPUT0, datatype: FP32, shape: [2]}}]
aliases: [{", ".join(aliases)}]
"""


def _request(model: str) -> InferenceRequest:
    return InferenceRequest(model, (Tensor("INPUT0", "FP32", np.ones(2, np.float32)),))


async def test_an_alias_stands_for_its_model_everywhere(repo: Path, serve: Start) -> None:
    write_model(repo, "yolov5", _yaml("image_queue_yolov5"), {"1/.keep": ""})
    service = await serve()
    answer = await service.infer(_request("image_queue_yolov5"))
    assert answer.model_name == "yolov5"
    assert service.metadata("image_queue_yolov5").name == "yolov5"
    assert service.model_ready("image_queue_yolov5")
    assert service.model("image_queue_yolov5").name == "yolov5"
    assert [r.name for r in service.model_status("image_queue_yolov5")] == ["yolov5"]
    assert service.statistics("image_queue_yolov5")[0].name == "yolov5"
    assert service.model_config("image_queue_yolov5") == service.model_config("yolov5")
    with pytest.raises(ModelNotFound):
        await service.infer(_request("image_queue_other"))


async def test_two_models_claiming_one_alias_both_stop_serving(repo: Path, serve: Start) -> None:
    write_model(repo, "a", _yaml("shared"), {"1/.keep": ""})
    write_model(repo, "b", _yaml("shared"), {"1/.keep": ""})
    write_model(repo, "c", _yaml("other"), {"1/.keep": ""})
    service = await serve()
    for name in ("a", "b", "shared"):
        with pytest.raises(ModelUnavailable) as info:
            await service.infer(_request(name))
        assert "'a' and 'b'" in info.value.message and "'shared'" in info.value.message
    rows = {r.name: r for r in service.index()}
    assert rows["a"].state == rows["b"].state == "UNAVAILABLE"
    assert "'a' and 'b'" in rows["b"].reason
    assert service.model("a").state is ModelState.UNAVAILABLE
    assert (await service.infer(_request("other"))).model_name == "c"


async def test_an_alias_that_is_another_models_name_stops_both(repo: Path, serve: Start) -> None:
    write_model(repo, "a", _yaml("b"), {"1/.keep": ""})
    write_model(repo, "b", _yaml(), {"1/.keep": ""})
    service = await serve()
    for name in ("a", "b"):
        with pytest.raises(ModelUnavailable, match="'a' and 'b'"):
            await service.infer(_request(name))
    # Fixing model.yaml and loading again ends the clash for both.
    write_model(repo, "a", _yaml("a2"))
    await service.load("a")
    assert (await service.infer(_request("b"))).model_name == "b"
    assert (await service.infer(_request("a2"))).model_name == "a"
    assert service.model("b").state is ModelState.READY
