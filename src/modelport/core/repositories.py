"""Models from more places than one repository folder, served as one repository.

:class:`~modelport.core.repository.ModelRepository` reads one folder of model folders
and asks an ``extra`` :class:`~modelport.core.repository.SourceProvider` for the names
it does not have. This module makes that provider from several:

- more repository folders (``tritonserver``'s repeated ``--model-repository``): a
  ``ModelRepository`` is a provider itself;
- models served from folders of their own, under names of their own
  (:class:`FolderModels`: TF Serving's ``--model_name`` / ``--model_base_path``, and
  the entries of its ``model_config_list``);
- models declared elsewhere (ABLInfer's specs).

:class:`SourceChain` asks them in order: the first that lists a name serves it, as the
repository folder itself comes before all of them. :func:`model_folder` says where a
model's files really are, for the watcher that reloads what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelport.core.repository import (
    SAVED_MODEL_FILES,
    TF_SERVING_SPEC,
    ModelRepository,
    ModelSource,
    SourceProvider,
)
from modelport.core.watcher import WatchedModels
from modelport.errors import ModelNotFound, SpecError
from modelport.numbers import natural
from modelport.spec import SPEC_FILE, ModelSpec, parse_spec


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderModel:
    """A model served from a folder of its own (its version folders inside), under a
    name of its own. ``overrides`` are model.yaml fields set over the folder's own
    (a TF Serving folder has none: it serves as ``runtime: tensorflow``), e.g.
    ``{"version_policy": {"all": True}, "batching": {"max_queue_delay_us": 500}}``;
    ``declared_in`` names where the model was declared, for error messages."""

    name: str
    path: Path
    declared_in: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


class FolderModels:
    """The models of a list of :class:`FolderModel`, as a source provider. ``entries``
    gives the current list each time it is asked (a config file read again)."""

    def __init__(self, entries: Callable[[], Sequence[FolderModel]]) -> None:
        self._entries = entries

    def _by_name(self) -> dict[str, FolderModel]:
        return {entry.name: entry for entry in self._entries()}

    def names(self) -> list[str]:
        return sorted(self._by_name())

    def folder(self, name: str) -> Path | None:
        entry = self._by_name().get(name)
        return entry.path if entry is not None else None

    def source(self, name: str) -> ModelSource:
        entry = self._by_name().get(name)
        if entry is None:
            raise ModelNotFound(f"no model '{name}' is declared")
        path = entry.path
        if not path.is_dir():
            raise SpecError(
                f"{entry.declared_in}: model '{name}': its folder {path} does not exist; "
                "it holds the model's version folders (1/, 2/...)"
            )
        spec = _with_overrides(_folder_spec(name, path), entry)
        numbered = (natural(p.name) for p in path.iterdir() if p.is_dir())
        available = sorted(v for v in numbered if v)
        if not available:
            raise SpecError(
                f"{entry.declared_in}: model '{name}': {path} has no version folders; put "
                f"the model files in {path}/1/ (versions are folders named by positive "
                "integers)"
            )
        versions = spec.version_policy.select(available)
        if not versions:
            raise SpecError(
                f"{entry.declared_in}: model '{name}': its version policy selects none of "
                f"the versions in {path} ({', '.join(map(str, available))})"
            )
        return ModelSource(name, path, spec, tuple(versions))


def _folder_spec(name: str, path: Path) -> ModelSpec:
    """The folder's model.yaml (whatever the folder is called, the model is ``name``),
    else the spec of a TF Serving folder, else SpecError."""
    yaml_file = path / SPEC_FILE
    if yaml_file.is_file():
        try:
            text = yaml_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{yaml_file}: cannot be read: {exc}") from None
        return parse_spec(name, text, str(yaml_file))
    saved_models = (
        version / file
        for version in path.iterdir()
        if version.is_dir() and natural(version.name) is not None
        for file in SAVED_MODEL_FILES
    )
    if any(p.is_file() for p in saved_models):
        return parse_spec(name, TF_SERVING_SPEC, f"{path} (a TF Serving folder)")
    raise SpecError(
        f"{path}: neither a model.yaml nor a SavedModel in a version folder "
        f"({path}/1/saved_model.pb); model '{name}' cannot be served from it"
    )


def _with_overrides(spec: ModelSpec, entry: FolderModel) -> ModelSpec:
    if not entry.overrides:
        return spec
    data = spec.model_dump(exclude_defaults=True)
    for key, value in entry.overrides.items():
        old = data.get(key)
        # A section (batching, instances, threads) is merged field by field.
        data[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"{entry.declared_in}: model '{entry.name}': {problems}") from None


class SourceChain:
    """Several providers as one: the first that lists a name serves it."""

    def __init__(self, providers: Sequence[SourceProvider]) -> None:
        self.providers = tuple(providers)

    def names(self) -> list[str]:
        return sorted({name for provider in self.providers for name in provider.names()})

    def _provider(self, name: str) -> SourceProvider | None:
        return next((p for p in self.providers if name in p.names()), None)

    def source(self, name: str) -> ModelSource:
        provider = self._provider(name)
        if provider is None:
            raise ModelNotFound(f"no model '{name}' in any repository")
        return provider.source(name)

    def folder(self, name: str) -> Path | None:
        provider = self._provider(name)
        if isinstance(provider, ModelRepository):
            return provider.root / name
        if isinstance(provider, FolderModels):
            return provider.folder(name)
        return None


def model_folder(repository: ModelRepository, name: str) -> Path:
    """Where ``name``'s files are: its folder in the repository, else the folder the
    repository's ``extra`` providers give it (else where the repository would have it)."""
    own = repository.root / name
    if own.is_dir() or not isinstance(repository.extra, SourceChain):
        return own
    return repository.extra.folder(name) or own


class WatchedFolders:
    """The models a watcher keeps in line with their files, each at the folder it really
    has: a model of another repository folder, or of a folder of its own, is not under
    the first repository's root, where the service looks (see :func:`model_folder`)."""

    def __init__(self, models: WatchedModels, repository: ModelRepository) -> None:
        self.models = models
        self.repository = repository

    def model_folders(self) -> dict[str, Path]:
        return {
            name: path if path.is_dir() else model_folder(self.repository, name)
            for name, path in self.models.model_folders().items()
        }

    def follows_its_files(self, name: str) -> bool:
        return self.models.follows_its_files(name)

    async def load_here(self, name: str, *, raise_errors: bool = True) -> None:
        await self.models.load_here(name, raise_errors=raise_errors)

    async def forget(self, name: str) -> None:
        await self.models.forget(name)
