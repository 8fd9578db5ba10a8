"""``modelport tritonserver`` as a real process, driven by tritonclient: two repositories,
explicit model control (only --load-model loads at start, the repository API loads the
rest), and Triton's metrics (nv_*) read from the metrics port after some inferences, by
value. GPU metrics need NVML, which needs an NVIDIA GPU these machines lack: the fake
NVML of tests/support/nvml_stub stands in for it. Also: --exit-on-error (Triton's
default) stops a server whose model fails to load."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.builders import add_sub_onnx, mlp_onnx, write_model
from support.command_servers import SRC, CommandServer, free_port, start_command
from support.nvml_fixtures import TWO_GPUS, fake_nvml_env

pytestmark = pytest.mark.timeout(120)


@dataclass
class Triton:
    server: CommandServer
    grpc: str
    metrics: str


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Triton]:
    first = tmp_path_factory.mktemp("repository-a")
    second = tmp_path_factory.mktemp("repository-b")
    add_sub_onnx(
        write_model(first, "add_sub", "runtime: onnx\nmax_batch_size: 8\n") / "1" / "model.onnx"
    )
    mlp_onnx(
        write_model(second, "mlp", "runtime: onnx\nmax_batch_size: 8\n") / "1" / "model.onnx",
        sizes=(16, 32, 10),
    )
    http, grpc, metrics = free_port(), free_port(), free_port()
    server = start_command(
        [
            "tritonserver",
            f"--model-repository={first}",
            "--model-repository", str(second),
            "--model-control-mode=explicit",
            "--load-model", "add_sub",
            "--http-port", str(http),
            f"--grpc-port={grpc}",
            "--metrics-port", str(metrics),
            "--strict-model-config=false",
        ],
        log_path=tmp_path_factory.mktemp("logs") / "tritonserver.log",
        http_port=http,
        env=fake_nvml_env(TWO_GPUS),
    )  # fmt: skip
    server.wait_ready()
    yield Triton(server, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics")
    server.stop()


def _add_sub_inputs(rows: int) -> list[httpclient.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [rows, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((rows, 4), np.float32))
        inputs.append(tensor)
    return inputs


def _value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the metrics text, found by its exact labels."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    assert found, f"no {name}{{{wanted}}} in:\n{text}"
    return float(found[1])


def test_explicit_control_loads_only_the_named_model(triton: Triton) -> None:
    client = httpclient.InferenceServerClient(triton.server.http.removeprefix("http://"))
    assert client.is_model_ready("add_sub")
    assert not client.is_model_ready("mlp")
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert set(index) == {"add_sub", "mlp"}  # both repositories are listed
    assert index["mlp"]["state"] == "UNAVAILABLE" and index["mlp"]["reason"] == "not loaded"


def test_the_repository_api_loads_a_model_of_the_second_repository(triton: Triton) -> None:
    with grpcclient.InferenceServerClient(triton.grpc) as client:
        client.load_model("mlp")
        assert client.is_model_ready("mlp")
        metadata = client.get_model_metadata("mlp", as_json=True)
        x = grpcclient.InferInput(metadata["inputs"][0]["name"], [2, 16], "FP32")
        x.set_data_from_numpy(np.zeros((2, 16), np.float32))
        output = metadata["outputs"][0]["name"]
        assert client.infer("mlp", [x]).as_numpy(output).shape == (2, 10)


def test_triton_metrics_count_the_inferences(triton: Triton) -> None:
    client = httpclient.InferenceServerClient(triton.server.http.removeprefix("http://"))
    for rows in (1, 3, 2):
        result = client.infer("add_sub", _add_sub_inputs(rows))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((rows, 4), 2.0))
    bad = httpclient.InferInput("INPUT0", [1, 5], "FP32")
    bad.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("add_sub", [bad, _add_sub_inputs(1)[1]])
    answer = httpx.get(triton.metrics)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.text
    assert "# TYPE nv_inference_request_success counter" in text
    key = {"model": "add_sub", "version": "1"}
    assert _value(text, "nv_inference_request_success", **key) == 3
    assert _value(text, "nv_inference_request_failure", **key, reason="OTHER") == 1
    assert _value(text, "nv_inference_request_failure", **key, reason="REJECTED") == 0
    assert _value(text, "nv_inference_count", **key) == 6
    executions = _value(text, "nv_inference_exec_count", **key)
    assert 1 <= executions <= 3
    assert _value(text, "nv_inference_request_duration_us", **key) > 0
    assert _value(text, "nv_inference_compute_infer_duration_us", **key) > 0
    queue = _value(text, "nv_inference_queue_duration_us", **key)
    assert 0 <= queue <= _value(text, "nv_inference_request_duration_us", **key)
    assert _value(text, "nv_inference_pending_request_count", **key) == 0
    # The fake NVML's two GPUs (37 % busy, 12 GiB used of 80), as Triton labels GPUs.
    assert _value(text, "nv_gpu_utilization", gpu_uuid="GPU-0") == pytest.approx(0.37)
    assert _value(text, "nv_gpu_memory_used_bytes", gpu_uuid="GPU-0") == 12 * 2**30
    assert _value(text, "nv_gpu_memory_total_bytes", gpu_uuid="GPU-1") == 80 * 2**30
    assert httpx.get(triton.metrics.replace("/metrics", "/v2")).status_code == 404


def test_the_unused_flag_is_said_once(triton: Triton) -> None:
    assert triton.server.log().count("--strict-model-config is accepted") == 1


def test_exit_on_error_stops_a_server_whose_model_fails(tmp_path: Path) -> None:
    write_model(tmp_path / "models", "broken", "runtime: onnx\n", {"1/model.onnx": b"not onnx"})
    done = subprocess.run(
        [
            sys.executable, "-m", "modelport", "tritonserver",
            f"--model-repository={tmp_path / 'models'}", f"--http-port={free_port()}",
            f"--grpc-port={free_port()}", f"--metrics-port={free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={
            "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "MODELPORT_HOST": "127.0.0.1",
            "MODELPORT_DATA_DIR": str(tmp_path / "data"),
        },
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "models failed to load: broken (" in done.stderr
    assert "--exit-on-error=false serves the others" in done.stderr
