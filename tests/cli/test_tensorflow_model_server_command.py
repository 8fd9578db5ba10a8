"""``modelport tensorflow_model_server`` as a real process, with TF Serving's own files:
a models.config of two models (version policy, version labels), a batching parameters
file, a monitoring config, and SavedModels carrying warm-up records written by
TensorFlow's tf.io.TFRecordWriter. Driven by TF Serving's REST API (httpx) and its gRPC
API (stubs of modelport's own tensorflow_serving protos); the monitoring path is
scraped for TF Serving's metrics, by value. A second process serves one model from
--model_name and --model_base_path. The SavedModels are built by TensorFlow in child
processes (tests/support/tf_builders.py, tf_warmup.py); this process never imports it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from modelport.protos.tensorflow.core.framework import tensor_pb2, types_pb2
from modelport.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from support.command_servers import CommandServer, free_port, start_command
from support.tf_builders import X, build_saved_model
from support.tf_warmup import GOOD_RECORDS, WARMUP_FILE, write_warmup_file

pytestmark = pytest.mark.timeout(240)

MONITORING = "/monitoring/prometheus/metrics"


@dataclass
class Served:
    server: CommandServer
    grpc: str
    root: Path
    expected: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """``classifier/1``, ``classifier/2`` and ``other/1``: the SavedModel with good warm-up
    records; ``broken/1``: the same with a record for an input the model lacks."""
    root = tmp_path_factory.mktemp("tf-serving-models")
    expected = build_saved_model(root / "classifier" / "1")
    write_warmup_file(root / "classifier" / "1", "good")
    shutil.copytree(root / "classifier" / "1", root / "classifier" / "2")
    shutil.copytree(root / "classifier" / "1", root / "other" / "1")
    shutil.copytree(root / "classifier" / "1", root / "broken" / "1")
    write_warmup_file(root / "broken" / "1", "bad")
    return root, expected


@pytest.fixture(scope="module")
def served(
    models: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root, expected = models
    files = tmp_path_factory.mktemp("tf-serving-files")
    (files / "models.config").write_text(
        f"""model_config_list {{
  config {{
    name: "classifier"
    base_path: "{root / "classifier"}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "second"
    base_path: "{root / "other"}"
    version_labels {{ key: "stable" value: 1 }}
  }}
  config {{ name: "broken" base_path: "{root / "broken"}" }}
}}
"""
    )
    (files / "batching.config").write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 4 }\nnum_batch_threads { value: 1 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 16\n"
    )
    (files / "monitoring.config").write_text(
        f'prometheus_config {{\n  enable: true,\n  path: "{MONITORING}"\n}}\n'
    )
    rest, port = free_port(), free_port()
    server = start_command(
        [
            "tensorflow_model_server",
            f"--port={port}",
            "--rest_api_port", str(rest),
            f"--model_config_file={files / 'models.config'}",
            "--enable_batching",
            "--batching_parameters_file", str(files / "batching.config"),
            f"--monitoring_config_file={files / 'monitoring.config'}",
            "--grpc_max_threads=4",
            "--file_system_poll_wait_seconds=0",
        ],
        log_path=files / "server.log",
        http_port=rest,
    )  # fmt: skip
    server.wait_ready(timeout=120)
    yield Served(server, f"127.0.0.1:{port}", root, expected)
    server.stop()


def _tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = array.astype("<f4").tobytes()
    return proto


def _floats(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    return np.frombuffer(proto.tensor_content, "<f4").reshape(shape)


def _value(text: str, name: str, *, missing: float | None = None, **labels: str) -> float:
    """One sample's value, found by its exact labels; ``missing`` when it is absent
    (None: it must be there)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    if found is None and missing is not None:
        return missing
    assert found, f"no {name}{{{wanted}}} in:\n{text}"
    return float(found[1])


def test_the_config_files_models_and_versions(served: Served) -> None:
    base = served.server.http
    status = httpx.get(f"{base}/v1/models/classifier").json()["model_version_status"]
    assert sorted((s["version"], s["state"]) for s in status) == [
        ("1", "AVAILABLE"),
        ("2", "AVAILABLE"),
    ]  # model_version_policy { all {} }
    for label in ("stable", "canary"):
        answer = httpx.post(
            f"{base}/v1/models/classifier/labels/{label}:predict", json={"instances": X.tolist()}
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"], served.expected["y"], rtol=1e-6)
    assert httpx.get(f"{base}/v1/models/classifier/labels/beta").status_code == 404
    second = httpx.post(
        f"{base}/v1/models/second/labels/stable:predict", json={"inputs": X.tolist()}
    )
    np.testing.assert_allclose(second.json()["outputs"], served.expected["y"], rtol=1e-6)


def test_a_failing_warmup_record_fails_the_load(served: Served) -> None:
    status = httpx.get(f"{served.server.http}/v1/models/broken").json()["model_version_status"]
    (only,) = status
    assert only["state"] == "END"
    message = only["status"]["error_message"]
    assert f"{served.root / 'broken' / '1' / WARMUP_FILE}: record 1" in message
    assert "nope" in message


def test_the_batching_parameters_apply(served: Served) -> None:
    base = served.server.http
    config = httpx.get(f"{base}/v2/models/classifier/config").json()
    assert config["max_batch_size"] == 16
    url = f"{base}/v1/models/classifier/versions/1:predict"
    assert httpx.post(url, json={"instances": np.ones((16, 4)).tolist()}).status_code == 200
    too_many = httpx.post(url, json={"instances": np.ones((17, 4)).tolist()})
    assert too_many.status_code == 400 and "max_batch_size" in too_many.json()["error"]


def test_grpc_predict_by_label(served: Served) -> None:
    with grpc.insecure_channel(served.grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "classifier"
        request.model_spec.version_label = "canary"
        request.inputs["x"].CopyFrom(_tensor(X))
        response = stub.Predict(request, timeout=30)
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(_floats(response.outputs["y"]), served.expected["y"], rtol=1e-6)


def test_tf_serving_metrics_on_the_monitoring_path(served: Served) -> None:
    base = served.server.http
    second = {"model_name": "second"}
    latency = {**second, "API": "Predict", "entrypoint": "ALL"}
    runtime = {**second, "API": "Predict", "runtime": "tensorflow"}
    counted = {
        "ok": (":tensorflow:serving:request_count", {**second, "status": "OK"}),
        "invalid": (":tensorflow:serving:request_count", {**second, "status": "INVALID_ARGUMENT"}),
        "latency": (":tensorflow:serving:request_latency_count", latency),
        "runtime": (":tensorflow:serving:runtime_latency_count", runtime),
    }

    def counts() -> dict[str, float]:
        text = httpx.get(f"{base}{MONITORING}").text
        return {
            key: _value(text, name, missing=0, **labels) for key, (name, labels) in counted.items()
        }

    before = counts()
    url = f"{base}/v1/models/second:predict"
    for rows in (1, 2):
        assert httpx.post(url, json={"instances": X[:rows].tolist()}).status_code == 200
    assert httpx.post(url, json={"instances": [[1.0, 2.0]]}).status_code == 400
    after = counts()
    assert {key: after[key] - before[key] for key in counted} == {
        "ok": 2,
        "invalid": 1,
        "latency": 3,
        "runtime": 2,
    }
    text = httpx.get(f"{base}{MONITORING}").text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert _value(text, ":tensorflow:serving:request_latency_sum", **latency) > 0
    # Each loaded version ran its warm-up records once (num_batch_threads 1: one instance).
    for version in ("classifier/1", "classifier/2", "other/1"):
        path = {"model_path": str(served.root / version), "status": "OK"}
        assert _value(text, ":tensorflow:serving:model_warmup_latency_count", **path) == 1
        assert _value(text, ":tensorflow:serving:model_warmup_latency_sum", **path) > 0
    log = served.server.log()
    assert log.count(f"{GOOD_RECORDS} warm-up records of") == 3
    # TF Serving's metrics are on their path; modelport's own stay on /metrics.
    assert "modelport_requests_total" in httpx.get(f"{base}/metrics").text


def test_an_unused_flag_is_said_once(served: Served) -> None:
    assert served.server.log().count("--grpc_max_threads is accepted and has no effect") == 1


def test_one_model_from_its_base_path(
    models: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    root, expected = models
    rest, port = free_port(), free_port()
    server = start_command(
        [
            "tensorflow_model_server",
            "--port", str(port),
            "--rest_api_port", str(rest),
            "--model_name", "digits",
            "--model_base_path", str(root / "classifier"),
            "--enable_model_warmup=false",
        ],
        log_path=tmp_path / "server.log",
        http_port=rest,
    )  # fmt: skip
    try:
        server.wait_ready(timeout=120)
        status = httpx.get(f"{server.http}/v1/models/digits").json()["model_version_status"]
        assert [s["version"] for s in status] == ["2"]  # TF Serving's default: the latest
        answer = httpx.post(
            f"{server.http}/v1/models/digits:predict", json={"instances": X.tolist()}
        )
        np.testing.assert_allclose(answer.json()["predictions"], expected["y"], rtol=1e-6)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "digits"
            request.inputs["x"].CopyFrom(_tensor(X))
            outputs = stub.Predict(request, timeout=30).outputs
        np.testing.assert_allclose(_floats(outputs["y"]), expected["y"], rtol=1e-6)
        assert "warm-up records of" not in server.log()  # --enable_model_warmup=false
    finally:
        server.stop()
