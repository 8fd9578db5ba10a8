"""bench/gpu.py's CPU fallback, as CI runs it (no GPU here): the ResNet-like network is
built, run in process and with IO binding in FP32 and FP16, served by a real
``modelport serve`` driven by ``modelport bench`` over gRPC, and one table printed with
a rate for every row. On a GPU host the same script runs the CUDA/TensorRT providers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_the_gpu_benchmark_runs_on_the_cpu_and_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--quick", "--seconds", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "provider: CPUExecutionProvider" in done.stdout
    rows = re.findall(
        r"^(in process|io binding|served gRPC)\s+(fp32|fp16)\s+(\d+)\s+(\d+)\s+([\d,.]+)",
        done.stdout,
        re.MULTILINE,
    )
    modes = {(mode, precision) for mode, precision, *_ in rows}
    assert ("in process", "fp32") in modes and ("io binding", "fp32") in modes
    assert ("served gRPC", "fp32") in modes
    assert all(float(rate.replace(",", "")) > 0 for *_, rate in rows)
