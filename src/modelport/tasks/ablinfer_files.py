"""An ABLInfer session's files: the spec folder, uploads written in pieces, inputs packed
for the task, an output unpacked from the task's zip, and volumes converted between
.nii, .nii.gz and .nrrd with SimpleITK (the ``medical`` extra, imported when needed)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import yaml

from modelport.core.repository import ModelSource
from modelport.errors import InvalidInput, ModelNotFound, SpecError
from modelport.spec import parse_spec
from modelport.spec.ablinfer import AblinferSpec, load_spec

log = logging.getLogger("modelport.ablinfer")


def simpleitk_installed() -> bool:
    return importlib.util.find_spec("SimpleITK") is not None


class SpecFolder:
    """The ABLInfer specs of one folder, read again when its files change. A file that
    cannot be used is left out, with the reason (``unavailable``)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.specs: dict[str, AblinferSpec] = {}
        self.unavailable: dict[str, str] = {}
        self._seen: tuple[tuple[str, int, int], ...] | None = None

    def refresh(self) -> None:
        if self.folder is None:
            return
        try:
            files = sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in os.scandir(self.folder)
                if e.name.lower().endswith(".json") and e.is_file()
            )
        except OSError as exc:
            files = []
            self.unavailable = {str(self.folder): f"the spec folder cannot be read: {exc}"}
        seen = tuple(files)
        if seen == self._seen:
            return
        self._seen = seen
        specs: dict[str, AblinferSpec] = {}
        unavailable: dict[str, str] = {}
        for name, _mtime, _size in files:
            try:
                spec = load_spec(self.folder / name)
            except SpecError as exc:
                unavailable[name] = exc.message
                log.warning("ABLInfer spec UNAVAILABLE: %s", exc.message)
                continue
            if spec.id in specs:
                log.warning(
                    "ABLInfer specs %s and %s share the id %s; the later one is served",
                    specs[spec.id].source,
                    name,
                    spec.id,
                )
            specs[spec.id] = spec
        self.specs, self.unavailable = specs, unavailable
        log.info("ABLInfer specs: %s", sorted(specs) or "none")

    def get(self, model: str) -> AblinferSpec:
        self.refresh()
        spec = self.specs.get(model)
        if spec is None:
            raise ModelNotFound(f"Unknown model {model}")
        return spec


class AblinferSources:
    """The specs of a folder as container models of the repository (``modelport
    models``, the page, ``POST /v2/repository/index``, and the brokers' routing): one
    version each, run as ABLInfer sessions; a file that cannot be used is a model of its
    file's name whose reason names the file and the field."""

    def __init__(self, specs: SpecFolder) -> None:
        self.specs = specs

    def names(self) -> list[str]:
        self.specs.refresh()
        broken = [Path(name).stem for name in self.specs.unavailable]
        return sorted({*self.specs.specs, *broken})

    def source(self, name: str) -> ModelSource:
        self.specs.refresh()
        spec = self.specs.specs.get(name)
        if spec is None:
            for file, reason in self.specs.unavailable.items():
                if Path(file).stem == name:
                    raise SpecError(reason)
            raise ModelNotFound(f"no ABLInfer spec '{name}'")
        declared = {
            "runtime": "container",
            "description": str(spec.document.get("description") or spec.document["name"]),
            "container": {"image": spec.image},
        }
        where = f"{spec.source} (an ABLInfer spec)"
        folder = self.specs.folder or Path(".")
        return ModelSource(name, folder, parse_spec(name, yaml.safe_dump(declared), where), (1,))


def write_piece(handle: IO[bytes], data: bytes) -> None:
    handle.write(data)


def close_and_remove(handle: IO[bytes], path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def pack_inputs(folder: Path, names: list[str], packed: Path) -> None:
    # Volumes are compressed already (or large and raw): stored, not deflated again.
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name in names:
            archive.write(folder / name, name)


def unpack_one(open_blob: Callable[[str], IO[bytes]], key: str, path: Path) -> None:
    with open_blob(key) as handle, zipfile.ZipFile(handle) as archive:
        partial = path.with_name(path.name + ".partial")
        with archive.open(path.name) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out)
        partial.replace(path)


def convert_volume(source: Path, target: Path, filetype: str, extension: str) -> None:
    """Convert an upload of ``filetype`` to ``extension`` with SimpleITK (which reads and
    writes by file name), or refuse it with upstream's two reasons."""
    named = source.with_name(f"{target.name}.upload{filetype}")
    source.replace(named)
    try:
        import SimpleITK

        SimpleITK.WriteImage(SimpleITK.ReadImage(str(named)), str(target))
    except Exception as exc:
        raise InvalidInput(
            f"Expected filetype {extension}\nAttempted conversion failed: {exc}"
        ) from None
    finally:
        named.unlink(missing_ok=True)
