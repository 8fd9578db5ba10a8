"""Which GPUs this host has, and how busy they are, through NVML.

The GPUs models may be placed on come from the ``gpus`` setting when it is given
(``"0,1"``, or ``"none"``), else from NVML (the NVIDIA driver's management library,
through ``nvidia-ml-py``, which the ``gpu`` extra installs), else there are none. NVML
also gives the utilisation and memory that ``observability.GpuMetrics`` exports. Without
``nvidia-ml-py`` or a driver, nothing here fails: there are simply no GPUs to read.

NVML numbers GPUs as the driver does and ignores ``CUDA_VISIBLE_DEVICES``; where that
variable hides some GPUs, declare the ids CUDA sees with the ``gpus`` setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from modelport.core.instances import Gpus

log = logging.getLogger("modelport.observability.gpus")

NONE = "none"  # the gpus setting's value for "use no GPU, whatever the host has"


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuReading:
    """One GPU at one moment, as NVML reports it."""

    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    uuid: str = ""  # "GPU-8c5d...", as Triton's metrics label GPUs; "" where NVML has none


class Nvml:
    """NVML, started by :meth:`open`; where it cannot start, ``available`` is false,
    ``why_not`` says why, and there are no GPUs to count or read."""

    def __init__(self, module: ModuleType | None, why_not: str = "") -> None:
        self._nvml: Any = module
        self.why_not = why_not

    @property
    def available(self) -> bool:
        return self._nvml is not None

    @classmethod
    def open(cls) -> Nvml:
        try:
            import pynvml  # nvidia-ml-py: the gpu extra
        except ImportError:
            return cls(None, "nvidia-ml-py is not installed, so NVML cannot be asked")
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # pynvml.NVMLError, or OSError from ctypes
            return cls(None, f"NVML did not start (no NVIDIA driver here?): {exc}")
        return cls(pynvml)

    def count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount()) if self.available else 0

    def read(self) -> list[GpuReading]:
        """Every GPU NVML sees; a GPU that fails to answer is left out, never raised."""
        try:
            count = self.count()
        except Exception as exc:
            log.debug("NVML: no device count: %s", exc)
            return []
        readings: list[GpuReading] = []
        for index in range(count):
            try:
                readings.append(self._read(index))
            except Exception as exc:  # a GPU fallen off the bus must not fail a scrape
                log.debug("NVML: GPU %d did not answer: %s", index, exc)
        return readings

    def _read(self, index: int) -> GpuReading:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = nvml.nvmlDeviceGetName(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
        uuid = nvml.nvmlDeviceGetUUID(handle) if hasattr(nvml, "nvmlDeviceGetUUID") else ""
        return GpuReading(
            index=index,
            name=name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name),
            utilization_percent=float(utilization.gpu),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            uuid=uuid.decode("ascii", "replace") if isinstance(uuid, bytes) else str(uuid),
        )


def parse_gpu_ids(value: str) -> tuple[int, ...] | None:
    """The ids of a ``gpus`` setting ("0,1"), () for "none", None when not given."""
    value = value.replace(" ", "")
    if not value:
        return None
    if value.lower() == NONE:
        return ()
    return tuple(dict.fromkeys(int(g) for g in value.split(",") if g))


def discover_gpus(setting: str, nvml: Nvml) -> Gpus:
    """The GPUs models may use: the ids the ``gpus`` setting declares, else every GPU
    NVML counts; the ``source`` says which, or why there are none."""
    declared = parse_gpu_ids(setting)
    if declared is not None:
        source = "declared by the gpus setting" if declared else "the gpus setting says none"
        return Gpus(declared, source)
    if not nvml.available:
        return Gpus((), nvml.why_not)
    try:
        count = nvml.count()
    except Exception as exc:
        return Gpus((), f"NVML could not count the GPUs: {exc}")
    if not count:
        return Gpus((), "NVML finds no GPU")
    return Gpus(tuple(range(count)), "found by NVML")
