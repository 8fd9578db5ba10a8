"""The model repository: a folder of ``<name>/model.yaml`` and ``<name>/<version>/`` files.

Only reads the layout; loading is the registry's job. Folders whose names start with
``.`` or ``_`` are ignored (``__pycache__``, editor files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelport.errors import ModelNotFound, SpecError
from modelport.spec import SPEC_FILE, ModelSpec, load_spec


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where one model's files are, and the versions its policy selects."""

    name: str
    path: Path
    spec: ModelSpec
    versions: tuple[int, ...]


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        """Every model folder, whether or not its model.yaml is valid."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
        )

    def source(self, name: str) -> ModelSource:
        """Read one model's spec and versions; SpecError names what is wrong."""
        path = self.root / name
        if not name or "/" in name or name.startswith((".", "_")) or not path.is_dir():
            raise ModelNotFound(f"no model '{name}' in the repository {self.root}")
        if not (path / SPEC_FILE).is_file():
            raise SpecError(
                f"{path / SPEC_FILE}: missing; every model folder needs one "
                "(at least 'runtime: onnx')"
            )
        spec = load_spec(path)
        available = [
            int(p.name)
            for p in path.iterdir()
            if p.is_dir() and p.name.isdigit() and int(p.name) > 0
        ]
        if not available:
            raise SpecError(
                f"{path}: no version folders; put the model files in {path}/1/ "
                "(versions are folders named by positive integers)"
            )
        versions = spec.version_policy.select(available)
        if not versions:
            raise SpecError(
                f"{path / SPEC_FILE}: field 'version_policy': selects none of the versions "
                f"present ({', '.join(map(str, sorted(available)))})"
            )
        return ModelSource(name, path, spec, tuple(versions))
