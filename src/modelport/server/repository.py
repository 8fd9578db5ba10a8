"""Where a server's models come from (the repository the settings describe), and which
of them load at start.

The repository folder, the other repository folders (``extra_repositories``), the
models of ``model_folders`` and ``model_config_file`` (TF Serving's, with the batching
and threads of its flags) and ABLInfer's specs are served as one
:class:`~modelport.core.repository.ModelRepository` (``core/repositories.py``), made
here the one way ``modelport serve``, ``modelport worker`` and the tasks all use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from modelport.core.entries import ModelState
from modelport.core.repositories import FolderModel, FolderModels, SourceChain
from modelport.core.repository import ModelRepository, SourceProvider
from modelport.core.service import InferenceService
from modelport.runtimes.remote_repository import RemoteRepositories
from modelport.settings import Settings
from modelport.supply.allow_lists import url_allow_list
from modelport.supply.tfserving_config import ModelConfigFile, read_batching_parameters
from modelport.tasks.ablinfer_files import AblinferSources, SpecFolder

log = logging.getLogger("modelport")

# The root of a repository with no folder of its own: /dev/null is never a folder, so it
# lists no model and holds none.
NO_FOLDER = Path(os.devnull)


def build_repository(
    settings: Settings, only: frozenset[str] | None = None, *, mirror_remotes: bool = True
) -> ModelRepository:
    """The local repository: its folder (none when ``repository`` is ""), the other
    repository folders, the models of ``model_folders`` and ``model_config_file``
    (TF Serving's), ABLInfer's specs as container models, and (``mirror_remotes``) the
    models remote repositories list, as remote ones (``<name>.remote.yaml`` files and
    ``[[remote]]`` tables), in that order: the first that has a name serves it.
    SettingsError for an unusable TF Serving file."""
    providers: list[SourceProvider] = [
        ModelRepository(Path(folder), only) for folder in settings.extra_repositories
    ]
    folder_models = build_folder_models(settings)
    if folder_models is not None:
        providers.append(folder_models)
    if settings.ablinfer_models:
        providers.append(AblinferSources(SpecFolder(ablinfer_folder(settings))))
    if mirror_remotes:
        sources = url_allow_list(settings.model_sources, (settings.repository,))
        providers.append(RemoteRepositories(settings.repository_path, settings.remote, sources))
    # With no repository folder the root is one that never lists a model.
    root = settings.repository_path if settings.repository else NO_FOLDER
    return ModelRepository(root, only, extra=SourceChain(providers) if providers else None)


def build_folder_models(settings: Settings) -> FolderModels | None:
    """The models of ``model_folders`` and ``model_config_file``, each with the TF
    Serving flags' batching and threads; None when there are none."""
    if not settings.model_folders and not settings.model_config_file:
        return None
    overrides = tfserving_overrides(settings)
    named = []
    for item in settings.model_folders:
        name, _, folder = item.partition("=")
        named.append(
            FolderModel(
                name=name.strip(),
                path=Path(folder.strip()).resolve(),
                declared_in=f"model folder {item}",
                overrides=overrides,
            )
        )
    config = None
    if settings.model_config_file:
        config = ModelConfigFile(
            Path(settings.model_config_file),
            poll_s=settings.model_config_poll_seconds,
            overrides=overrides,
        )

    def entries() -> tuple[FolderModel, ...]:
        return (*named, *(config.entries() if config is not None else ()))

    return FolderModels(entries)


def tfserving_overrides(settings: Settings) -> dict[str, Any]:
    """The model.yaml fields the TF Serving settings set on the models of
    ``model_folders`` and ``model_config_file``: batching, TensorFlow's threads."""
    fields: dict[str, Any] = {}
    if settings.enable_batching:
        file = settings.batching_parameters_file
        fields.update(read_batching_parameters(Path(file) if file else None).overrides())
    threads = {
        name: value
        for name, value in (
            ("intra_op", settings.tensorflow_intra_op_parallelism),
            ("inter_op", settings.tensorflow_inter_op_parallelism),
        )
        if value is not None
    }
    if threads:
        fields["threads"] = threads
    return fields


def ablinfer_folder(settings: Settings) -> Path | None:
    return Path(settings.ablinfer_models).resolve() if settings.ablinfer_models else None


class StartupFailed(Exception):
    """Models that must load at start did not (``exit_on_error``), or are unknown."""


async def open_models(
    settings: Settings, service: InferenceService, local: ModelRepository
) -> None:
    """Load the models ``startup_models`` names (every one for '*'); with
    ``exit_on_error``, StartupFailed when one of them is unknown or fails to load."""
    chosen = None if "*" in settings.startup_models else frozenset(settings.startup_models)
    unknown = sorted(chosen - set(local.names())) if chosen is not None else []
    if unknown:
        message = (
            f"startup_models names {unknown}, which no repository has; the models are "
            f"{local.names()}"
        )
        if settings.exit_on_error:
            raise StartupFailed(message)
        log.warning("%s", message)
    await service.open(chosen)
    if not settings.exit_on_error:
        return
    failed = [
        f"{model.name} ({model.reason})"
        for model in service.models()
        if model.state is ModelState.UNAVAILABLE and not (model.spec and model.spec.runs_as_tasks)
    ]
    if failed:
        raise StartupFailed(
            f"models failed to load: {'; '.join(failed)} (exit_on_error: tritonserver's "
            "--exit-on-error=false serves the others)"
        )


def poll_interval(settings: Settings) -> float:
    """How often the watcher looks at the models' files and model_config_file: the
    shorter of poll_seconds and model_config_poll_seconds that are set (0: never)."""
    chosen = [s for s in (settings.poll_seconds, settings.model_config_poll_seconds) if s]
    return min(chosen) if chosen else 0.0
