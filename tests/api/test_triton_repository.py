"""A Triton model repository (config.pbtxt files, no model.yaml) served by a real
``modelport serve`` process, to Triton's own clients over HTTP and gRPC: ONNX models, an
ensemble of them, the classification extension, the configuration answered back, and
the folders that cannot serve, each UNAVAILABLE with a reason naming what to fix."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from support.builders import write_model
from support.triton_repos import (
    ENSEMBLE_CONFIG,
    LABELS,
    write_triton_model,
    write_triton_repository,
)

pytestmark = pytest.mark.timeout(60)

A = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 8.0, 2.0]], dtype=np.float32)
B = np.array([[0.5, 0.5, 1.0, -4.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
# Scores of the four classes, two rows: the top two are (fish, bird) and (cat, fish).
SCORES = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.05, 0.0, 0.5]], dtype=np.float32)
TOP_TWO = [
    [b"0.400000:3:fish", b"0.300000:2:bird"],
    [b"0.900000:0:cat", b"0.500000:3:fish"],
]


@dataclass(frozen=True)
class Served:
    http: str
    grpc: str
    repo: Path
    process: Any


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_unusable_models(repo: Path) -> None:
    write_triton_model(
        repo, "broken", 'platform: "onnxruntime_onnx"\ninput [\n  { name: "x" dims: [4\n'
    )
    write_triton_model(
        repo,
        "misspelt",
        'platform: "onnxruntime_onnx"\nmax_batch_size: 2\ninput [ { name: "x", dimz: [4] } ]\n',
    )
    write_triton_model(repo, "engine", 'platform: "tensorrt_plan"\nmax_batch_size: 8\n')
    lost = ENSEMBLE_CONFIG.replace('"twice"', '"lost"').replace(
        'model_name: "add_sub"\n      model_version: 1',
        'model_name: "gone"\n      model_version: 1',
    )
    write_triton_model(repo, "lost", lost, {"1/.keep": ""})
    folder = write_model(
        repo,
        "both",
        """\
        runtime: fake
        inputs: [{name: INPUT0, datatype: FP32, shape: [2]}]
        outputs: [{name: OUTPUT0, datatype: FP32, shape: [2]}]
        """,
        {"1/README": "the fake runtime needs no files"},
    )
    (folder / "config.pbtxt").write_text('platform: "tensorrt_plan"\n')


@pytest.fixture(scope="module")
def served(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    repo = write_triton_repository(tmp_path_factory.mktemp("triton") / "models")
    _write_unusable_models(repo)
    port = _free_port()
    process = server_factory(repo=repo, grpc_port=port)
    return Served(process.url, f"127.0.0.1:{port}", repo, process)


@pytest.fixture
def http(served: Served) -> Iterator[triton_http.InferenceServerClient]:
    with triton_http.InferenceServerClient(
        served.http.removeprefix("http://"), network_timeout=20
    ) as client:
        yield client


@pytest.fixture
def grpc(served: Served) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(served.grpc) as client:
        yield client


def _inputs(module: Any, names: tuple[str, ...], *arrays: np.ndarray) -> list[Any]:
    inputs = []
    for name, array in zip(names, arrays, strict=True):
        tensor = module.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def test_onnx_models_and_their_ensemble_answer_over_http(
    http: triton_http.InferenceServerClient,
) -> None:
    result = http.infer("add_sub", _inputs(triton_http, ("INPUT0", "INPUT1"), A, B))
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), A + B)
    before = http.get_inference_statistics("add_sub")["model_stats"][0]["inference_count"]
    result = http.infer("twice", _inputs(triton_http, ("A", "B"), A, B))
    np.testing.assert_allclose(result.as_numpy("TWICE_A"), 2 * A)
    np.testing.assert_allclose(result.as_numpy("TWICE_B"), 2 * B)
    # The ensemble counts its request; each of its two steps counted one on add_sub.
    stats = http.get_inference_statistics("twice")["model_stats"][0]
    assert stats["inference_count"] >= 2
    after = http.get_inference_statistics("add_sub")["model_stats"][0]["inference_count"]
    assert after - before == 2 * len(A)
    meta = http.get_model_metadata("twice")
    assert meta["platform"] == "ensemble"
    assert [i["name"] for i in meta["inputs"]] == ["A", "B"]


def test_the_ensemble_answers_over_grpc(grpc: triton_grpc.InferenceServerClient) -> None:
    result = grpc.infer("twice", _inputs(triton_grpc, ("A", "B"), A, B))
    np.testing.assert_allclose(result.as_numpy("TWICE_A"), 2 * A)
    np.testing.assert_allclose(result.as_numpy("TWICE_B"), 2 * B)


def test_classification_with_class_count_over_http(
    http: triton_http.InferenceServerClient,
) -> None:
    for binary in (True, False):
        wanted = [triton_http.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=2)]
        result = http.infer("scores", _inputs(triton_http, ("INPUT0",), SCORES), outputs=wanted)
        answer = result.as_numpy("OUTPUT0")
        assert answer.shape == (2, 2)
        # tritonclient gives BYTES read from JSON as str, and binary ones as bytes.
        assert [[x if isinstance(x, bytes) else x.encode() for x in row] for row in answer] == (
            TOP_TWO
        )
    assert "classification" in http.get_server_metadata()["extensions"]


def test_classification_with_class_count_over_grpc(
    grpc: triton_grpc.InferenceServerClient,
) -> None:
    wanted = [triton_grpc.InferRequestedOutput("OUTPUT0", class_count=2)]
    result = grpc.infer("scores", _inputs(triton_grpc, ("INPUT0",), SCORES), outputs=wanted)
    assert result.as_numpy("OUTPUT0").tolist() == TOP_TWO
    # More classes than the model has: all four, best first.
    wanted = [triton_grpc.InferRequestedOutput("OUTPUT0", class_count=9)]
    result = grpc.infer("scores", _inputs(triton_grpc, ("INPUT0",), SCORES[:1]), outputs=wanted)
    assert [item.split(b":")[2].decode() for item in result.as_numpy("OUTPUT0")[0]] == [
        LABELS[3],
        LABELS[2],
        LABELS[1],
        LABELS[0],
    ]


def test_the_config_is_answered_back_over_http_and_grpc(
    http: triton_http.InferenceServerClient, grpc: triton_grpc.InferenceServerClient
) -> None:
    config = http.get_model_config("add_sub")
    assert (config["platform"], config["max_batch_size"]) == ("onnxruntime_onnx", 8)
    assert config["input"][0] == {"name": "INPUT0", "dims": [4], "data_type": "TYPE_FP32"}
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["default_queue_policy"] == {"max_queue_size": 32}
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert http.get_model_config("scores")["output"][0]["label_filename"] == "labels.txt"
    message = grpc.get_model_config("twice").config
    assert message.platform == "ensemble"
    steps = message.ensemble_scheduling.step
    assert [(s.model_name, s.model_version) for s in steps] == [("add_sub", -1), ("add_sub", 1)]
    assert dict(steps[1].input_map) == {"INPUT0": "A", "INPUT1": "B"}
    grpc_config = grpc.get_model_config("add_sub", as_json=True)["config"]
    assert grpc_config["dynamic_batching"]["max_queue_delay_microseconds"] == "100"


def test_folders_that_cannot_serve_say_why(http: triton_http.InferenceServerClient) -> None:
    reasons = {
        row["name"]: row.get("reason", "")
        for row in http.get_model_repository_index()
        if row.get("state") == "UNAVAILABLE"
    }
    assert set(reasons) == {"broken", "misspelt", "engine", "lost"}
    assert "broken/config.pbtxt:4:1: not valid protobuf text" in reasons["broken"]
    assert 'at the end of the file, after `{ name: "x" dims: [4`' in reasons["broken"]
    assert "misspelt/config.pbtxt:3:" in reasons["misspelt"]
    assert "field 'dimz'" in reasons["misspelt"]
    assert "engine/config.pbtxt:1: field 'platform': 'tensorrt_plan'" in reasons["engine"]
    assert "onnxruntime_onnx" in reasons["engine"]
    assert "ensemble step 1 names model 'gone', which is not in the repository" in reasons["lost"]


def test_a_folder_with_both_files_serves_from_model_yaml_and_logs_it(
    served: Served, http: triton_http.InferenceServerClient
) -> None:
    assert http.is_model_ready("both")
    assert http.get_model_config("both")["backend"] == "fake"
    assert "model both has both model.yaml and config.pbtxt: serving from" in served.process.log()
