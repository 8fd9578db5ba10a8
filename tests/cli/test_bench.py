"""``modelport bench`` run as users run it: a real process against a real server.

Every load run is short (1 s a concurrency); speed is printed by the command, never
asserted here. What is checked: each generator's table has a row per concurrency with
numbers, the server counted at least the requests the command says were answered, the
errors column counts real failures, and bad input ends with a clear error.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from modelport.security.keys import KeyStore

pytestmark = pytest.mark.timeout(90)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Served:
    """A server of this module's own: its HTTP base URL and gRPC address."""

    url: str
    grpc: str


@dataclass(frozen=True)
class Row:
    """One row of the bench table."""

    concurrency: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: str


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(server_factory: Any) -> Served:
    grpc_port = unused_port()
    proc = server_factory(grpc_port=grpc_port)
    return Served(proc.url, f"127.0.0.1:{grpc_port}")


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so rich does not wrap the table cells the tests read.
    environ = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "modelport", "bench", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def table_rows(stdout: str) -> list[Row]:
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 7 and cells[0].isdigit():
            numbers = [float(c) for c in cells[1:6]]
            rows.append(Row(int(cells[0]), *numbers, errors=cells[6]))
    return rows


def successes(url: str, model: str) -> int:
    stats = httpx.get(f"{url}/v2/models/{model}/stats").json()["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def address(served: Served, protocol: str) -> str:
    return served.url if protocol == "http" else served.grpc


@pytest.mark.parametrize(
    ("protocol", "generator", "extra"),
    [
        ("http", "wrk", []),
        ("http", "asyncio", ["--binary"]),
        ("grpc", "h2load", []),
        ("grpc", "asyncio", []),
    ],
)
def test_each_generator_reports_every_concurrency(
    served: Served, tmp_path: Path, protocol: str, generator: str, extra: list[str]
) -> None:
    before = successes(served.url, "mlp")
    out = tmp_path / "bench.json"
    result = bench("mlp", "--url", address(served, protocol), "--protocol", protocol,
                   "--generator", generator, "--duration", "1", "--concurrency", "1,4",
                   "--json", str(out), *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row.concurrency for row in rows] == [1, 4], result.stdout
    for row in rows:
        assert row.requests_per_s > 0
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.mean_ms > 0
        assert row.errors == "0"
    report = json.loads(out.read_text())
    assert report["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]}]
    assert report["generator"].startswith(generator)
    # The table says which tool measured what.
    assert f"load: {report['generator']}" in result.stdout
    assert f"latency: {report['latency_source']}" in result.stdout
    answered = sum(run["answered"] for run in report["results"])
    assert answered > 0
    # The answers were real: the server counted at least as many successes.
    assert successes(served.url, "mlp") - before >= answered
    print(result.stdout)  # the numbers, shown with -s


def test_auto_falls_back_to_asyncio_and_says_so(served: Served) -> None:
    # Only the interpreter can be found: no wrk on this PATH.
    result = bench("mlp", "--url", served.url, "--duration", "1", "--concurrency", "2",
                   env={"PATH": str(Path(sys.executable).parent)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrk is not installed: the asyncio client drives the load" in result.stderr
    assert "load: asyncio," in result.stdout
    assert [row.concurrency for row in table_rows(result.stdout)] == [2]


def test_plot_draws_latency_against_throughput(served: Served, tmp_path: Path) -> None:
    plot = tmp_path / "mlp.png"
    result = bench("mlp", "--url", served.url, "--duration", "1", "--concurrency", "1,4",
                   "--plot", str(plot))  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(plot) as image:
        assert image.size == (800, 500)
        # Lines, markers, labels and anti-aliasing: far more than a blank canvas's colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


@pytest.mark.parametrize(
    ("protocol", "generator", "kind"),
    [("http", "wrk", "non-2xx"), ("grpc", "h2load", "gRPC error (short answer)")],
)
def test_refused_requests_are_counted_as_errors(
    served: Served, tmp_path: Path, protocol: str, generator: str, kind: str
) -> None:
    # ``slow`` answers one call at a time and queues two: of four in flight, one is refused.
    out = tmp_path / "bench.json"
    result = bench("slow", "--url", address(served, protocol), "--protocol", protocol,
                   "--generator", generator, "--duration", "1", "--concurrency", "4",
                   "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(out.read_text())["results"]
    assert run["answered"] > 0
    assert run["errors"] > 0
    assert run["error_detail"] == f"{run['errors']} {kind}"
    (row,) = table_rows(result.stdout)
    assert row.errors == f"{run['errors']} ({run['error_detail']})"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unknown_model_is_a_clear_error(served: Served, protocol: str) -> None:
    result = bench("nope", "--url", address(served, protocol), "--protocol", protocol)
    assert result.returncode == 1
    assert "error: model 'nope'" in result.stderr
    assert "unknown model 'nope'" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_server_is_a_clear_error(free_port: Any) -> None:
    result = bench("mlp", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "error: cannot reach" in result.stderr


def test_a_dynamic_dimension_needs_a_shape(served: Served, tmp_path: Path) -> None:
    # identity_fp32 takes [batch, -1]: the batch defaults to 1, the other size cannot.
    result = bench("identity_fp32", "--url", served.url, "--duration", "1")
    assert result.returncode == 1
    assert "input 'INPUT0' has a dynamic dimension" in result.stderr
    assert "--shape INPUT0:1,16" in result.stderr
    out = tmp_path / "bench.json"
    result = bench("identity_fp32", "--url", served.url, "--duration", "1", "--concurrency",
                   "1", "--shape", "INPUT0:1,8", "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["inputs"][0]["shape"] == [1, 8]


def test_a_shape_that_does_not_fit_names_the_input(served: Served) -> None:
    result = bench("mlp", "--url", served.url, "--shape", "INPUT0:1,17")
    assert result.returncode == 1
    assert "--shape INPUT0:1,17 does not fit the input's shape [-1, 16]" in result.stderr


def test_inputs_from_files(served: Served, tmp_path: Path) -> None:
    document = tmp_path / "inputs.json"
    # INPUT1 without its batch dimension: added, as the model batches.
    document.write_text(json.dumps({"INPUT0": [[1, 2, 3, 4]], "INPUT1": [0.5, 0.5, 0.5, 0.5]}))
    out = tmp_path / "bench.json"
    result = bench("add_sub", "--url", served.url, "--input", str(document), "--duration", "1",
                   "--concurrency", "1", "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    shapes = {t["name"]: t["shape"] for t in json.loads(out.read_text())["inputs"]}
    assert shapes == {"INPUT0": [1, 4], "INPUT1": [1, 4]}

    arrays = tmp_path / "inputs.npz"
    np.savez(arrays, INPUT0=np.ones((1, 4), dtype=np.float32))
    result = bench("add_sub", "--url", served.url, "--input", str(arrays))
    assert result.returncode == 1
    assert f"{arrays}: no data for input(s) INPUT1" in result.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_failing_check_request_stops_before_the_load(served: Served, protocol: str) -> None:
    # A batch of 16 fits the metadata ([-1, -1]) but not max_batch_size 8: the server
    # refuses the check request, and its words are printed.
    result = bench("identity_fp32", "--url", address(served, protocol), "--protocol", protocol,
                   "--shape", "INPUT0:16,4")  # fmt: skip
    assert result.returncode == 1
    assert "error: the check request failed" in result.stderr
    assert "has batch size 16" in result.stderr
    assert "concurrency" not in result.stdout


def test_a_file_that_does_not_fit_the_datatype_is_a_clear_error(
    served: Served, tmp_path: Path
) -> None:
    document = tmp_path / "inputs.json"
    document.write_text(json.dumps({"INPUT0": [["a"] * 4], "INPUT1": [["b"] * 4]}))
    result = bench("add_sub", "--url", served.url, "--input", str(document))
    assert result.returncode == 1
    assert "input 'INPUT0': cannot be read as FP32" in result.stderr


@pytest.fixture(scope="module")
def keyed(server_factory: Any, tmp_path_factory: Any) -> tuple[Served, str]:
    """A server that asks every call for an API key, and a key with the infer scope."""
    store = KeyStore(tmp_path_factory.mktemp("bench-keys") / "keys.json")
    token = store.create("bench", ["infer"]).token
    grpc_port = unused_port()
    proc = server_factory(grpc_port=grpc_port, env={"MODELPORT_KEYS_FILE": str(store.path)})
    return Served(proc.url, f"127.0.0.1:{grpc_port}"), token


@pytest.mark.parametrize(("protocol", "generator"), [("http", "wrk"), ("grpc", "h2load")])
def test_an_api_key_is_sent_by_every_request(
    keyed: tuple[Served, str], protocol: str, generator: str
) -> None:
    served, token = keyed
    target = ["add_sub", "--url", address(served, protocol), "--protocol", protocol]
    refused = bench(*target)
    assert refused.returncode == 1
    assert "401" in refused.stderr or "UNAUTHENTICATED" in refused.stderr
    result = bench(*target, "--generator", generator, "--key", token, "--duration", "1",
                   "--concurrency", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = table_rows(result.stdout)
    assert row.requests_per_s > 0 and row.errors == "0"
