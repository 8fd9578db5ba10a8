"""The ``modelport`` command, run as users run it: a real process against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelport import __version__

pytestmark = pytest.mark.timeout(20)


def modelport(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so rich does not wrap the table cells the tests look into.
    environ = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=15,
    )


def test_version() -> None:
    result = modelport("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"modelport {__version__}"


def test_models_lists_states_and_the_broken_models_reason(server: str) -> None:
    result = modelport("models", "--url", server)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "│" in line}
    assert "READY" in rows["add_sub"]
    assert "UNAVAILABLE" in rows["broken"]
    assert "field 'max_batch_sise': unknown field" in rows["broken"]
    assert "broken/model.yaml" in rows["broken"]


def test_models_reads_the_url_from_the_environment(server: str) -> None:
    result = modelport("models", env={"MODELPORT_URL": server})
    assert result.returncode == 0, result.stderr
    assert "identity_bytes" in result.stdout


def output_rows(stdout: str) -> dict[str, str]:
    """The predict table's rows by output name."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1].startswith("OUTPUT"):
            rows[cells[1]] = line
    return rows


def test_predict_with_named_npy_files(server: str, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([1.5, 2.0, -3.0, 4.25], dtype=np.float32))
    np.save(tmp_path / "b.npy", np.array([0.5, 1.0, 1.0, 0.25], dtype=np.float32))
    # Given in the other order: NAME=FILE picks the input.
    result = modelport(
        "predict",
        "add_sub",
        f"INPUT1={tmp_path / 'b.npy'}",
        f"INPUT0={tmp_path / 'a.npy'}",
        "--url",
        server,
    )
    assert result.returncode == 0, result.stderr
    assert "add_sub v1" in result.stdout
    rows = output_rows(result.stdout)
    assert "FP32" in rows["OUTPUT0"] and "[1, 4]" in rows["OUTPUT0"]
    assert "2, 3, -2, 4.5" in rows["OUTPUT0"]
    assert "1, 1, -4, 4" in rows["OUTPUT1"]


def test_predict_with_json_files_in_order(server: str, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([[10, 20, 30, 40], [1, 2, 3, 4]]))
    (tmp_path / "b.json").write_text(json.dumps([[1, 2, 3, 4], [1, 1, 1, 1]]))
    result = modelport(
        "predict", "add_sub", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--url", server
    )
    assert result.returncode == 0, result.stderr
    rows = output_rows(result.stdout)
    assert "[2, 4]" in rows["OUTPUT0"]
    assert "11, 22, 33, 44, 2, 3, 4, 5" in rows["OUTPUT0"]
    assert "9, 18, 27, 36, 0, 1, 2, 3" in rows["OUTPUT1"]


def test_predict_errors_are_clear(server: str, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[1, 2, 3]")
    missing = modelport("predict", "no_such_model", str(tmp_path / "a.json"), "--url", server)
    assert missing.returncode == 1
    assert "error 404" in missing.stderr and "no_such_model" in missing.stderr

    wrong = modelport(
        "predict",
        "add_sub",
        f"INPUT0={tmp_path / 'a.json'}",
        f"INPUT1={tmp_path / 'a.json'}",
        "--url",
        server,
    )
    assert wrong.returncode == 1
    assert "error 400" in wrong.stderr and "[-1, 4]" in wrong.stderr

    unknown = modelport("predict", "add_sub", f"NOPE={tmp_path / 'a.json'}", "--url", server)
    assert unknown.returncode != 0
    assert "no input 'NOPE'" in unknown.stderr


def test_unreachable_url_is_a_clear_error(free_port: Callable[[], int]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = modelport("models", "--url", url)
    assert result.returncode == 1
    assert f"cannot reach {url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_port_flag_beats_the_environment(
    server_factory: Any, free_port: Callable[[], int]
) -> None:
    flag_port, env_port = free_port(), free_port()
    url = f"http://127.0.0.1:{flag_port}"
    proc = server_factory(port=flag_port, env={"MODELPORT_PORT": str(env_port)})
    try:
        assert proc.url == url
        assert httpx.get(url + "/v2/models/add_sub/ready").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env_port}/v2/health/live")
        assert f"API:     {url}/v2" in proc.log()
    finally:
        code = proc.stop()
    # SIGTERM is a clean stop: the models are closed and the process exits 0.
    assert code == 0, proc.log()
    assert "modelport stopped" in proc.log()
