"""Polling the repository: new models and versions load, changed ones reload, removed
ones unload; a model unloaded through the API stays unloaded."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from modelport.core.service import InferenceService
from modelport.core.watcher import RepositoryWatcher
from support.builders import write_model

Start = Callable[..., Awaitable[InferenceService]]  # the serve fixture

FAKE = """\
runtime: fake
max_batch_size: 4
inputs: [{name: x, datatype: FP32, shape: [2]}]
outputs: [{name: y, datatype: FP32, shape: [2]}]
"""


def _rows(service: InferenceService) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for r in service.index():
        rows.setdefault(r.name, []).append(r.version or r.state)
    return rows


async def test_scan_follows_the_repository(repo: Path, serve: Start) -> None:
    write_model(repo, "a", FAKE, {"1/.keep": ""})
    write_model(repo, "b", FAKE, {"1/.keep": ""})
    service = await serve()
    watcher = RepositoryWatcher(service, 3600)
    await watcher.start()
    try:
        first = service.get_version("a")
        await watcher.scan()  # nothing changed: nothing reloads
        assert service.get_version("a") is first

        write_model(repo, "c", FAKE, {"1/.keep": ""})
        (repo / "a" / "2").mkdir()
        (repo / "b" / "__pycache__").mkdir()  # caches do not count as changes
        await watcher.scan()
        assert _rows(service) == {"a": ["2"], "b": ["1"], "c": ["1"]}

        (repo / "a" / "model.yaml").write_text(FAKE + "version_policy: {all: true}\n")
        await watcher.scan()
        assert _rows(service)["a"] == ["1", "2"]

        shutil.rmtree(repo / "a" / "1")
        shutil.rmtree(repo / "c")
        await watcher.scan()
        assert _rows(service) == {"a": ["2"], "b": ["1"]}
        assert "c" not in [m.name for m in service.models()]

        await service.unload("b")
        (repo / "b" / "model.yaml").write_text(FAKE + "\n")
        await watcher.scan()
        assert _rows(service)["b"] == ["UNAVAILABLE"]
    finally:
        await watcher.close()


@pytest.mark.parametrize("broken", ["runtime: fake\nmax_batch_sise: 4\n"])
async def test_a_broken_change_keeps_the_old_version(repo: Path, serve: Start, broken: str) -> None:
    write_model(repo, "a", FAKE, {"1/.keep": ""})
    service = await serve()
    watcher = RepositoryWatcher(service, 3600)
    await watcher.start()
    try:
        (repo / "a" / "model.yaml").write_text(broken)
        await watcher.scan()
        assert _rows(service) == {"a": ["1"]}
        assert service.get_version("a").spec.max_batch_size == 4
    finally:
        await watcher.close()
