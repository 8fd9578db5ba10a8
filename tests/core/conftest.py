"""Fixtures for the core: a model repository in a temporary folder, and a started
InferenceService over it, wired as app.py wires it (real runtimes, real event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from modelport.core.cache import MemoryLimits
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.core.service import InferenceService
from modelport.runtimes.fake import FakeRuntime
from modelport.runtimes.onnx import OnnxRuntime
from modelport.runtimes.python import PythonRuntime

RUNTIMES: dict[str, RuntimeFactory] = {
    "fake": FakeRuntime,
    "onnx": OnnxRuntime,
    "python": PythonRuntime,
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
async def serve(
    repo: Path,
) -> AsyncIterator[Callable[..., Awaitable[InferenceService]]]:
    """``await serve()`` starts a service over ``repo`` and loads every model in it.
    Test files annotate it as ``Start``: conftest modules are not imported by tests."""
    services: list[InferenceService] = []

    async def start(load_all: bool = True, limits: MemoryLimits | None = None) -> InferenceService:
        service = InferenceService(
            ModelRepository(repo), RUNTIMES, name="modelport", version="test", limits=limits
        )
        services.append(service)
        if load_all:
            await service.open()
        return service

    yield start
    for service in services:
        await service.close()
