"""A fake NVML for the GPU tests (tests/support/nvml_stub/pynvml.py): NVML cannot run without an
NVIDIA GPU and driver, which the test machines lack, so a stand-in ``pynvml`` module
describes GPUs that are not there. ``fake_nvml_env`` is for a server process,
``use_fake_nvml`` for this one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

NVML_STUB = Path(__file__).parent / "nvml_stub"

TWO_GPUS: list[dict[str, Any]] = [
    {"name": "NVIDIA H100 80GB HBM3", "utilization": 37, "used": 12 * 2**30, "total": 80 * 2**30},
    {"name": "NVIDIA H100 80GB HBM3", "utilization": 0, "used": 512 * 2**20, "total": 80 * 2**30},
]
NO_DRIVER = "Driver Not Loaded"


def fake_nvml_env(gpus: list[dict[str, Any]], init_error: str = "") -> dict[str, str]:
    """Environment for a server process whose ``import pynvml`` finds the fake."""
    path = os.pathsep.join(p for p in (str(NVML_STUB), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        "FAKE_NVML_GPUS": json.dumps(gpus),
        "FAKE_NVML_INIT_ERROR": init_error,
    }


def use_fake_nvml(
    monkeypatch: pytest.MonkeyPatch, gpus: list[dict[str, Any]], init_error: str = ""
) -> None:
    """Make ``import pynvml`` in this process find the fake, until the test ends."""
    spec = importlib.util.spec_from_file_location("pynvml", NVML_STUB / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    monkeypatch.setenv("FAKE_NVML_GPUS", json.dumps(gpus))
    monkeypatch.setenv("FAKE_NVML_INIT_ERROR", init_error)


def without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pynvml`` fail in this process, as where nvidia-ml-py is not installed
    (whether or not it is installed here)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
