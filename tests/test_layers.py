"""The package's imports run downward, and nothing imports in a circle.

Every module under ``src/modelport`` is read with ``ast`` (imports inside functions
count too). The layer table below is the one statement of the architecture's floors:
a module may import its own floor or lower ones, never a higher one; the modules of one
floor may import each other, but no import chain may come back to where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import modelport

PACKAGE = Path(modelport.__file__).parent

# Lowest first. A module's floor is that of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    # the vocabulary: no transport
    ("errors", "numbers", "redaction", "tensors", "settings", "spec"),
    ("protos",),  # .proto files and their generated modules
    ("codecs",),
    ("core",),
    ("runtimes", "tasks", "cluster", "security", "supply", "observability"),
    ("api",),
    ("server",),
    ("cli",),
]
# The package's face (__init__ re-exports the public API) and entry point sit outside
# the floors; the bundled examples are user code that imports the public API.
OUTSIDE = ("", "__main__", "examples", "web")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _floor(module: str) -> int | None:
    top = module.split(".")[0]
    if top in OUTSIDE:
        return None
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"modelport.{module} is in no layer: add its package to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.split(".")[0] == "examples" or "_pb2" in path.name:
            continue
        found[name] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The modelport modules ``path`` imports, anywhere in it, as names under the package."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(["modelport", *anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target != "modelport" and not target.startswith("modelport."):
                continue
            short = target.removeprefix("modelport").removeprefix(".")
            if short in known:
                found.add(short)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def test_imports_run_downward() -> None:
    upward = []
    for name, targets in _graph().items():
        floor = _floor(name)
        if floor is None:
            continue
        for target in sorted(targets):
            target_floor = _floor(target)
            if target_floor is not None and target_floor > floor:
                upward.append(f"modelport.{name} -> modelport.{target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _graph()
    # Package faces (__init__) are left out: importing a submodule runs its package's
    # __init__, but that is no dependency of the submodule's own code.
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        trail.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, trail)
        trail.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
