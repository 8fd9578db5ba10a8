"""Real server processes started with an upstream server's command line:
``python -m modelport tritonserver ...`` and ``python -m modelport tensorflow_model_server
...``, ready once the HTTP port answers health, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CommandServer:
    """A ``modelport <command>`` process; its output goes to ``log_path``."""

    process: subprocess.Popen[bytes]
    http: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http}/v2/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_command(
    args: Sequence[str],
    *,
    log_path: Path,
    http_port: int,
    env: Mapping[str, str] | None = None,
) -> CommandServer:
    """Start ``python -m modelport <args>`` (this checkout's code) on loopback, with its
    task data in the log's folder; not waited for (see :meth:`CommandServer.wait_ready`)."""
    pythonpath = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    environ = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": pythonpath,
        # The upstream servers listen on every interface; the tests keep to loopback.
        "MODELPORT_HOST": "127.0.0.1",
        "MODELPORT_DATA_DIR": str(log_path.parent / f"data-{http_port}"),
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelport", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    return CommandServer(process, f"http://127.0.0.1:{http_port}", log_path)
