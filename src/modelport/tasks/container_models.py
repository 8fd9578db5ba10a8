"""The repository as tasks see it: container models found, added, and named to clients.

A model added through the tasks side (the zip-task cluster server's ``POST
/api/models/``) is a :class:`ContainerModel`; :func:`write_container_model` turns it into
a ``model.yaml`` and a version folder. Its clients name models with any string that fits
a path segment (timestamps with spaces and colons, tokens starting with ``-``):
:func:`model_folder` maps such a name to a safe folder name, and the name itself is kept
in the model.yaml (``parameters.human_readable_id``) and answered with. Errors a client
reads name models, never the repository's path on the server (:func:`task_source`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from modelport.core.repository import ModelRepository, ModelSource
from modelport.errors import Conflict, InvalidInput, ModelNotFound, ModelportError, SpecError
from modelport.spec import CONTAINER_RUNTIME, SPEC_FILE
from modelport.tasks.archives import ZipLimits, extract_zip
from modelport.tasks.records import hide_paths

# model.yaml parameters of models added through the zip-task cluster API.
MODEL_FILES = "model_available"  # whether a /model zip came with it
CLIENT_NAME = "human_readable_id"  # the name the client gave, when the folder differs
UID = "uid"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_CLIENT_NAME = 255  # a path segment on common file systems


@dataclass(frozen=True, slots=True, kw_only=True)
class PostedContainer:
    """The container settings of models clients post (settings ``compat_container_*``):
    what their images were built to run with, within what is safe (SECURITY.md)."""

    shm_size: str | None = "2g"
    ipc: Literal["private", "host"] = "private"
    network: Literal["none", "bridge"] = "none"
    user: str = "auto"

    def spec(self) -> dict[str, Any]:
        options: dict[str, Any] = {"network": self.network, "user": self.user}
        if self.shm_size is not None:
            options["shm_size"] = self.shm_size
        if self.ipc != "private":
            options["ipc"] = self.ipc
        return options


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerModel:
    """A container model as a client adds or lists it: its name (any non-empty string
    that fits a path segment), image, whether a ``/model`` zip came with it
    (``model_files``) and whether it takes a GPU. ``folder`` is its repository folder
    (:func:`model_folder` of the name), ``uid`` a token given when it was added (one
    derived from the folder for models an operator wrote)."""

    name: str
    image: str
    description: str | None = None
    use_gpu: bool = False
    model_files: bool = False
    uid: str = ""
    folder: str = ""

    def __post_init__(self) -> None:
        if not self.folder:
            object.__setattr__(self, "folder", model_folder(self.name))

    @classmethod
    def of(cls, source: ModelSource) -> ContainerModel | None:
        """The model's view, None when it is not a container model."""
        spec = source.spec
        if spec.container is None:
            return None
        parameters = spec.parameters
        return cls(
            name=str(parameters.get(CLIENT_NAME, source.name)),
            image=spec.container.image,
            description=spec.description or None,
            use_gpu=spec.container.gpu_count > 0,
            model_files=bool(parameters.get(MODEL_FILES, False)),
            uid=str(parameters.get(UID) or derived_uid(source.name)),
            folder=source.name,
        )

    def spec(self, container: PostedContainer) -> dict[str, Any]:
        """The model.yaml that declares it, its container run with ``container``."""
        parameters: dict[str, Any] = {MODEL_FILES: self.model_files, UID: self.uid}
        if self.folder != self.name:
            parameters[CLIENT_NAME] = self.name
        return {
            "runtime": CONTAINER_RUNTIME,
            "description": self.description or "",
            "container": {
                "image": self.image,
                "gpus": 1 if self.use_gpu else 0,
                **container.spec(),
            },
            "parameters": parameters,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NewContainerModel:
    """What a client posts: the model, and its ``/model`` files (a zip) if any."""

    model: ContainerModel
    static_files: Path | None = None
    container: PostedContainer = field(default_factory=PostedContainer)


def check_client_name(name: str) -> None:
    """InvalidInput unless ``name`` is a non-empty string that fits a path segment."""
    if not name:
        raise InvalidInput("a model needs a non-empty 'human_readable_id'")
    if (
        len(name) > MAX_CLIENT_NAME
        or name in (".", "..")
        or any(c in name for c in "/\\")
        or not name.isprintable()
    ):
        raise InvalidInput(
            f"bad model id {name[:80]!r}: it must fit a path segment (at most "
            f"{MAX_CLIENT_NAME} printable characters, no '/' or '\\', not '.' or '..')"
        )


def model_folder(name: str) -> str:
    """The repository folder of a model clients call ``name``: the name itself when it
    is a plain model name, else its safe characters and a hash of the whole name (so two
    names never share a folder)."""
    if MODEL_NAME.match(name):
        return name
    slug = _UNSAFE.sub("_", name).strip("._-")[:100]
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{slug}-{digest}" if slug else f"model-{digest}"


def derived_uid(name: str) -> str:
    """A stable token for a model that was not posted with one (written by an operator)."""
    return base64.urlsafe_b64encode(hashlib.sha256(name.encode()).digest()).decode().rstrip("=")


def new_uid() -> str:
    return secrets.token_urlsafe()


def task_source(repository: ModelRepository, name: str) -> ModelSource:
    """``repository.source(name)``, its errors told with model names rather than the
    repository's path on the server."""
    try:
        return repository.source(name)
    except ModelNotFound:
        raise ModelNotFound(f"no model '{name}' in the repository") from None
    except SpecError as exc:
        raise SpecError(hide_paths(exc.message, {repository.root: ""})) from None


def find_container_model(repository: ModelRepository, name: str) -> ContainerModel:
    """The container model clients call ``name``; ModelNotFound when there is none."""
    try:
        check_client_name(name)
        model = ContainerModel.of(task_source(repository, model_folder(name)))
    except (InvalidInput, SpecError):
        model = None
    if model is None or model.name != name:
        raise ModelNotFound(f"no container model '{name}' in the repository")
    return model


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
    repository: ModelRepository, new: NewContainerModel, *, limits: ZipLimits
) -> None:
    """Write a posted model into the repository: its model.yaml, and version 1 holding
    its static files (a zip) unpacked. Refuses a name that is taken."""
    model = new.model
    check_client_name(model.name)
    if not model.image:
        raise InvalidInput("a container model needs its image ('container_tag')")
    folder = repository.root / model.folder
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise Conflict(f"model '{model.name}' exists") from None
    try:
        # A model's folders are read by its containers, which may run as another user,
        # whatever the server's umask (the repository is not data_dir).
        folder.chmod(0o755)
        version = folder / "1"
        version.mkdir(mode=0o755)
        version.chmod(0o755)
        if new.static_files is not None:
            extract_zip(new.static_files, version, limits)
        spec = model.spec(new.container)
        (folder / SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
