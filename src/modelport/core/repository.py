"""The model repository: a folder of ``<name>/model.yaml`` and ``<name>/<version>/`` files.

Only reads the layout; loading is the registry's job. A Triton model folder
(``<name>/config.pbtxt``) needs no model.yaml: its config.pbtxt is read instead
(``core/config_pbtxt.py``); a folder with both serves from model.yaml and logs that it
does. A TF Serving model folder (``<name>/<version>/saved_model.pb``) needs neither: it
serves as :data:`TF_SERVING_SPEC` says. Folders whose names start with ``.`` or ``_`` are
ignored (``__pycache__``, editor files).

An ensemble's steps are checked here, where the other models are known: a step naming
a model that is not in the repository, or one that takes smaller batches than the
ensemble, makes the ensemble unusable, with a reason naming the step and the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelport.core.config_pbtxt import CONFIG_FILE, read_config_pbtxt
from modelport.errors import ModelNotFound, ModelportError, SpecError
from modelport.numbers import natural
from modelport.spec import SPEC_FILE, ModelSpec, load_spec, parse_spec

log = logging.getLogger("modelport.repository")

# A folder laid out for TF Serving (``<name>/<version>/saved_model.pb``) with no model.yaml
# serves as if it had this one; 128 rows lets a TF Serving client's larger batches through.
TF_SERVING_SPEC = "runtime: tensorflow\nmax_batch_size: 128\n"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where one model's files are, and the versions its policy selects."""

    name: str
    path: Path
    spec: ModelSpec
    versions: tuple[int, ...]
    declared_in: str = SPEC_FILE  # the file in ``path`` the spec was read from

    @property
    def spec_file(self) -> Path:
        """The file errors about the spec name (model.yaml, or Triton's config.pbtxt)."""
        return self.path / self.declared_in


class SourceProvider(Protocol):
    """Models declared outside the folder layout (ABLInfer's JSON specs), listed and read
    beside the folders' own."""

    def names(self) -> list[str]: ...

    def source(self, name: str) -> ModelSource:
        """The model's source; SpecError when its declaration cannot be used."""
        ...


class ModelRepository:
    def __init__(
        self,
        root: Path,
        only: frozenset[str] | None = None,
        *,
        extra: SourceProvider | None = None,
    ) -> None:
        """``only`` limits the repository to those model names (``modelport worker
        --models a,b``); ``extra`` adds models declared elsewhere (a folder's model of
        the same name wins)."""
        self.root = root
        self.only = only
        self.extra = extra
        self._told_both: set[Path] = set()  # folders with both files, logged once each

    def names(self) -> list[str]:
        """Every model folder, whether or not its model.yaml is valid."""
        found = set(self.extra.names()) if self.extra is not None else set()
        if self.root.is_dir():
            found.update(
                p.name
                for p in self.root.iterdir()
                if p.is_dir() and not p.name.startswith((".", "_"))
            )
        return sorted(n for n in found if self.only is None or n in self.only)

    def source(self, name: str) -> ModelSource:
        """Read one model's spec and versions; SpecError names what is wrong (for an
        ensemble, also a step whose model cannot serve it)."""
        source = self._read(name)
        if source.spec.ensemble is not None:
            self._check_steps(source)
        return source

    def _read(self, name: str) -> ModelSource:
        path = self.root / name
        hidden = self.only is not None and name not in self.only
        declared = self.extra is not None and not hidden and name in self.extra.names()
        if declared and not (name and "/" not in name and path.is_dir()):
            assert self.extra is not None
            return self.extra.source(name)
        if not name or "/" in name or name.startswith((".", "_")) or not path.is_dir() or hidden:
            raise ModelNotFound(f"no model '{name}' in the repository {self.root}")
        spec_file = path / SPEC_FILE
        if spec_file.is_file():
            if (path / CONFIG_FILE).is_file() and path not in self._told_both:
                self._told_both.add(path)
                log.info(
                    "model %s has both model.yaml and config.pbtxt: serving from %s "
                    "(its config.pbtxt is not read)",
                    name,
                    spec_file,
                )
            spec = load_spec(path)
        elif (path / CONFIG_FILE).is_file():
            spec = read_config_pbtxt(path)
            spec_file = path / CONFIG_FILE
        elif _is_tf_serving_folder(path):
            spec = parse_spec(name, TF_SERVING_SPEC, f"{path} (a TF Serving folder)")
        else:
            raise SpecError(
                f"{path / SPEC_FILE}: missing; every model folder needs one "
                f"(at least 'runtime: onnx'), or Triton's {CONFIG_FILE}"
            )
        numbered = (natural(p.name) for p in path.iterdir() if p.is_dir())
        available = [v for v in numbered if v]  # None (not a number) and 0 are no versions
        if not available:
            raise SpecError(
                f"{path}: no version folders; put the model files in {path}/1/ "
                "(versions are folders named by positive integers)"
            )
        versions = spec.version_policy.select(available)
        if not versions:
            raise SpecError(
                f"{spec_file}: field 'version_policy': selects none of the versions "
                f"present ({', '.join(map(str, sorted(available)))})"
            )
        return ModelSource(name, path, spec, tuple(versions), spec_file.name)

    def _check_steps(self, ensemble: ModelSource) -> None:
        assert ensemble.spec.ensemble is not None
        names = self.names()
        for index, step in enumerate(ensemble.spec.ensemble.step):
            where = f"model '{ensemble.name}': ensemble step {index}"
            if step.model_name == ensemble.name or step.model_name not in names:
                raise SpecError(
                    f"{where} names model '{step.model_name}', which is not in the repository "
                    f"{self.root}; add it, or fix the step's model_name"
                )
            try:
                called = self._read(step.model_name)
            except ModelportError as exc:
                raise SpecError(
                    f"{where} names model '{step.model_name}', which cannot be read: {exc.message}"
                ) from None
            if step.model_version != -1 and step.model_version not in called.versions:
                raise SpecError(
                    f"{where} names version {step.model_version} of model "
                    f"'{step.model_name}', which serves versions {list(called.versions)}"
                )
            wanted, allowed = ensemble.spec.max_batch_size, called.spec.max_batch_size
            if wanted > allowed:
                raise SpecError(
                    f"{where}: the ensemble takes batches of up to {wanted} (max_batch_size), "
                    f"but model '{step.model_name}' only {allowed}; lower the ensemble's"
                )


def _is_tf_serving_folder(path: Path) -> bool:
    return any(
        (version / file).is_file()
        for version in path.iterdir()
        if version.is_dir() and natural(version.name) is not None
        for file in SAVED_MODEL_FILES
    )
