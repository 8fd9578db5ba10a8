"""``runtime: container`` in model.yaml, and how the registry treats such models."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.core.repository import ModelRepository
from modelport.core.service import InferenceService
from modelport.errors import SpecError
from modelport.spec import parse_spec
from support.builders import write_model


def test_a_container_section_is_parsed_and_checked() -> None:
    spec = parse_spec("seg", "runtime: container\ncontainer: {image: 'a/b:1', gpus: [0, 2], "
                      "memory: 8G, cpus: 1.5, timeout: 10}\n", "model.yaml")  # fmt: skip
    assert spec.runs_as_tasks and spec.container is not None
    assert spec.container.gpu_count == 2 and spec.container.memory == "8g"
    assert not spec.container.network and spec.container.user == "auto"
    with pytest.raises(SpecError, match="needs a 'container' section"):
        parse_spec("seg", "runtime: container\n", "model.yaml")
    with pytest.raises(SpecError, match="only a runtime: container model"):
        parse_spec("seg", "runtime: onnx\ncontainer: {image: x}\n", "model.yaml")
    with pytest.raises(SpecError, match=r"container\.memory"):
        parse_spec("seg", "runtime: container\ncontainer: {image: x, memory: lots}\n", "m")


async def test_the_registry_lists_container_models_as_task_only(tmp_path: Path) -> None:
    write_model(tmp_path, "seg", "runtime: container\ncontainer: {image: x}\n", {"1/a": "x"})
    service = InferenceService(ModelRepository(tmp_path), {}, name="modelport", version="test")
    await service.open()
    [row] = service.index()
    assert (row.name, row.state) == ("seg", "UNAVAILABLE") and "POST /api/tasks" in row.reason
