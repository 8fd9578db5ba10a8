"""``runtime: container`` in model.yaml, and how the registry treats such models."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.core.repository import ModelRepository
from modelport.core.service import InferenceService
from modelport.errors import Conflict, InvalidInput, ModelNotFound, SpecError
from modelport.spec import parse_spec
from modelport.tasks.archives import ZipLimits
from modelport.tasks.container_models import (
    MODEL_NAME,
    ContainerModel,
    NewContainerModel,
    PostedContainer,
    container_models,
    find_container_model,
    model_folder,
    task_source,
    write_container_model,
)
from modelport.tasks.records import hide_paths
from support.builders import write_model


def test_a_container_section_is_parsed_and_checked() -> None:
    text = (
        "runtime: container\n"
        "container: {image: 'a/b:1', gpus: [0, 2], memory: 8G, cpus: 1.5, timeout: 10}\n"
    )
    spec = parse_spec("seg", text, "model.yaml")
    assert spec.runs_as_tasks and spec.container is not None
    assert spec.container.gpu_count == 2 and spec.container.memory == "8g"
    assert spec.container.network == "none" and spec.container.user == "auto"
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


def test_errors_tasks_show_name_models_not_the_repository_path(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    write_model(tmp_path, "broken", "runtime: container\ncontainer: {image: x, memory: lots}\n")
    with pytest.raises(ModelNotFound) as missing:
        task_source(repository, "nope")
    with pytest.raises(SpecError) as broken:
        task_source(repository, "broken")
    assert missing.value.message == "no model 'nope' in the repository"
    assert broken.value.message.startswith("broken/model.yaml: ")
    assert str(tmp_path) not in missing.value.message + broken.value.message


def test_a_container_model_is_written_and_listed_as_clients_gave_it(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    model = ContainerModel(
        name="seg-1", image="lab/seg:2", description="d", use_gpu=True, uid="u-1"
    )
    new = NewContainerModel(model=model)
    write_container_model(repository, new, limits=ZipLimits())
    assert container_models(repository) == [model]
    with pytest.raises(Conflict, match="exists"):
        write_container_model(repository, new, limits=ZipLimits())


@pytest.mark.parametrize(
    "name", ["hello_world_2024-01-02 03:04:05.678", "-token_Ab", "_x", "a b", "ünï", "..x"]
)
def test_any_name_that_fits_a_path_segment_gets_a_safe_folder(tmp_path: Path, name: str) -> None:
    repository = ModelRepository(tmp_path)
    model = ContainerModel(name=name, image="lab/seg:2", uid="u")
    container = PostedContainer(shm_size="1g", network="bridge", user="image")
    write_container_model(repository, NewContainerModel(model=model, container=container),
                          limits=ZipLimits())  # fmt: skip
    assert MODEL_NAME.match(model.folder) and model.folder in repository.names()
    found = find_container_model(repository, name)
    assert (found.name, found.folder, found.uid) == (name, model.folder, "u")
    spec = repository.source(model.folder).spec.container
    assert spec is not None and (spec.shm_size, spec.network, spec.user) == (
        "1g",
        "bridge",
        "image",
    )
    assert model_folder(name + "x") != model.folder
    with pytest.raises(ModelNotFound):
        find_container_model(repository, name + "x")


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", ".", "..", "x" * 256, "tab\there"])
def test_names_that_do_not_fit_a_path_segment_are_refused(tmp_path: Path, name: str) -> None:
    model = ContainerModel(name=name, image="lab/seg:2", uid="u")
    with pytest.raises(InvalidInput):
        write_container_model(ModelRepository(tmp_path), NewContainerModel(model=model),
                              limits=ZipLimits())  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_paths_are_hidden_longest_first() -> None:
    work = Path("/srv/data/work/t1")
    text = f"bind source path does not exist: {work}/input; see {work}/logs.txt and {work}"
    names = {work / "input": "/input", work: ""}
    assert hide_paths(text, names) == "bind source path does not exist: /input; see logs.txt and ."
