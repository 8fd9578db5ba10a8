"""The repository as tasks see it: container models found, added, and named to clients.

A model added through the tasks side (the zip-task cluster server's ``POST
/api/models/``) is a :class:`ContainerModel`; :func:`write_container_model` turns it into
a ``model.yaml`` and a version folder. Errors a client reads name models, never the
repository's path on the server (:func:`task_source`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelport.core.repository import ModelRepository, ModelSource
from modelport.errors import Conflict, InvalidInput, ModelNotFound, ModelportError, SpecError
from modelport.spec import CONTAINER_RUNTIME, SPEC_FILE
from modelport.tasks.archives import ZipLimits, extract_zip
from modelport.tasks.records import hide_paths

# model.yaml parameter of models added through the zip-task cluster API.
AVAILABLE = "model_available"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerModel:
    """A container model as a client adds or lists it: its name, image and whether it
    takes tasks (``available``) and a GPU."""

    name: str
    image: str
    description: str = ""
    use_gpu: bool = False
    available: bool = True

    @classmethod
    def of(cls, source: ModelSource) -> ContainerModel | None:
        """The model's view, None when it is not a container model."""
        spec = source.spec
        if spec.container is None:
            return None
        return cls(
            name=source.name,
            image=spec.container.image,
            description=spec.description,
            use_gpu=spec.container.gpu_count > 0,
            available=bool(spec.parameters.get(AVAILABLE, True)),
        )

    def spec(self) -> dict[str, Any]:
        """The model.yaml that declares it."""
        return {
            "runtime": CONTAINER_RUNTIME,
            "description": self.description,
            "container": {"image": self.image, "gpus": 1 if self.use_gpu else 0},
            "parameters": {AVAILABLE: self.available},
        }


def task_source(repository: ModelRepository, name: str) -> ModelSource:
    """``repository.source(name)``, its errors told with model names rather than the
    repository's path on the server."""
    try:
        return repository.source(name)
    except ModelNotFound:
        raise ModelNotFound(f"no model '{name}' in the repository") from None
    except SpecError as exc:
        raise SpecError(hide_paths(exc.message, {repository.root: ""})) from None


def container_models(repository: ModelRepository) -> list[ContainerModel]:
    """The repository's container models; models whose model.yaml is broken are left out."""
    found = []
    for name in repository.names():
        try:
            model = ContainerModel.of(repository.source(name))
        except ModelportError:
            continue
        if model is not None:
            found.append(model)
    return found


def write_container_model(
    repository: ModelRepository,
    model: ContainerModel,
    *,
    static_files: Path | None,
    limits: ZipLimits,
) -> None:
    """Write ``model`` into the repository: its model.yaml, and version 1 holding
    ``static_files`` (a zip) unpacked. Refuses a name that is taken."""
    if not MODEL_NAME.match(model.name):
        raise InvalidInput(f"bad model id {model.name!r}: letters, digits, '-', '_' and '.'")
    if not model.image:
        raise InvalidInput("a container model needs its image ('container_tag')")
    folder = repository.root / model.name
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise Conflict(f"model '{model.name}' exists") from None
    try:
        version = folder / "1"
        version.mkdir()
        if static_files is not None:
            extract_zip(static_files, version, limits)
        (folder / SPEC_FILE).write_text(yaml.safe_dump(model.spec(), sort_keys=False))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
