"""A stand-in for nvidia-ml-py's ``pynvml``, for tests: NVML cannot run without an
NVIDIA GPU and driver, which the test machines lack. Tests put this folder first on
``sys.path`` (or ``PYTHONPATH`` for a server process) and describe the GPUs in
environment variables, read at each call:

- ``FAKE_NVML_GPUS``: JSON list of ``{"name", "utilization", "used", "total"}``, one per
  GPU; ``"lost": true`` makes that GPU fail to answer, as one fallen off the bus does.
- ``FAKE_NVML_INIT_ERROR``: ``nvmlInit`` raises NVMLError with it, as on a host
  without the NVIDIA driver.

Only the calls modelport makes are here, with nvidia-ml-py's names and result fields.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


def _gpus() -> list[dict[str, Any]]:
    return list(json.loads(os.environ.get("FAKE_NVML_GPUS", "[]")))


def _gpu(handle: int) -> dict[str, Any]:
    gpu = _gpus()[handle]
    if gpu.get("lost"):
        raise NVMLError("GPU is lost")
    return gpu


def nvmlInit() -> None:
    error = os.environ.get("FAKE_NVML_INIT_ERROR")
    if error:
        raise NVMLError(error)


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> bytes:
    return str(_gpu(handle)["name"]).encode()  # nvidia-ml-py gives bytes


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    gpu = _gpu(handle)
    return SimpleNamespace(total=gpu["total"], used=gpu["used"], free=gpu["total"] - gpu["used"])


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=_gpu(handle)["utilization"], memory=0)
