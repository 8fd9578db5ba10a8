"""What the API-key tests share: a repository with ``add_sub`` and a ``gate`` model that
holds each call open until the test opens the gate, keys made in the test, a waiter."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.builders import add_sub_onnx, write_model

WAIT_S = 20.0

# A python model that says when a call has entered and waits until the test opens it.
GATE_PY = """\
import time
from pathlib import Path


class Model:
    def setup(self, context):
        self.gate = Path(context.spec.parameters["gate"])

    def predict(self, inputs):
        (self.gate / "entered").touch()
        deadline = time.monotonic() + 60
        while not (self.gate / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"y": inputs["x"]}
"""


@dataclass
class Gate:
    folder: Path

    def wait_entered(self) -> None:
        wait_until(lambda: (self.folder / "entered").exists(), "a call to enter the gate model")

    def open(self) -> None:
        (self.folder / "open").touch()


def build_auth_repository(root: Path) -> tuple[Path, Gate]:
    """``root/models`` with add_sub (FP32 [batch, 4]) and gate (FP32 [batch, 1])."""
    repo = root / "models"
    folder = write_model(repo, "add_sub", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    gate = Gate(root / "gate")
    gate.folder.mkdir()
    write_model(
        repo,
        "gate",
        f"""\
        runtime: python
        max_batch_size: 1
        inputs: [{{name: x, datatype: FP32, shape: [1]}}]
        outputs: [{{name: y, datatype: FP32, shape: [1]}}]
        parameters: {{gate: "{gate.folder}"}}
        """,
        {"1/model.py": GATE_PY},
    )
    return repo, gate


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_sub_body() -> dict[str, Any]:
    data = [1.0, 2.0, 3.0, 4.0]
    return {"inputs": [{"name": n, "shape": [1, 4], "datatype": "FP32", "data": data}
                       for n in ("INPUT0", "INPUT1")]}  # fmt: skip


GATE_BODY = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [7.0]}]}


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def loopback_port() -> int:
    """A free loopback port, for module-scoped servers (the free_port fixture is per test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
