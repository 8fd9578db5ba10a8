"""Triton's own HTTP client (``tritonclient.http``) against a real modelport process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from support.builders import ONNX_TYPES

pytestmark = pytest.mark.timeout(20)

# The test repository (tests/conftest.py) has one identity model per v2 datatype.
IDENTITY_MODELS = {datatype: f"identity_{datatype.lower()}" for datatype in ONNX_TYPES}


def connect(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=10)


@pytest.fixture
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with connect(server) as c:
        yield c


def add_sub_inputs(
    a: np.ndarray, b: np.ndarray, binary: tuple[bool, bool] = (True, True)
) -> list[triton.InferInput]:
    inputs = []
    for name, array, as_binary in (("INPUT0", a, binary[0]), ("INPUT1", b, binary[1])):
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array, binary_data=as_binary)
        inputs.append(tensor)
    return inputs


A = np.array([[1.5, 2.0, -3.25, 4.0], [0.0, 10.0, 20.0, 30.0]], dtype=np.float32)
B = np.array([[0.5, 1.0, 1.25, -4.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


def test_server_live_ready_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelport"
    assert meta["version"]
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_model_metadata_and_config(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub")
    assert meta["name"] == "add_sub"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    assert client.get_model_metadata("add_sub", "1")["name"] == "add_sub"

    config = client.get_model_config("add_sub")
    assert config["name"] == "add_sub"
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {"name": "INPUT0", "dims": [4], "data_type": "TYPE_FP32"}
    assert config["output"][1]["name"] == "OUTPUT1"
    assert client.get_model_config("identity_bytes")["input"][0]["data_type"] == "TYPE_STRING"


def test_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [
        ((True, True), True),
        ((False, False), False),
        ((True, False), False),
        ((False, True), True),
        ((False, False), None),  # no outputs named: tritonclient asks for binary ones
    ],
    ids=["binary", "json", "mixed-in-json-out", "mixed-in-binary-out", "default-outputs"],
)
def test_infer_add_sub(
    client: triton.InferenceServerClient, binary_in: tuple[bool, bool], binary_out: bool | None
) -> None:
    outputs = None
    if binary_out is not None:
        outputs = [
            triton.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
            triton.InferRequestedOutput("OUTPUT1", binary_data=binary_out),
        ]
    result = client.infer("add_sub", add_sub_inputs(A, B, binary_in), outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert result.as_numpy("OUTPUT0").dtype == np.float32
    response = result.get_response()
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == "1"
    sent_binary = binary_out is None or binary_out
    for out in response["outputs"]:
        assert ("binary_data_size" in out.get("parameters", {})) is sent_binary
        assert ("data" in out) is not sent_binary


def test_infer_one_output_per_encoding(client: triton.InferenceServerClient) -> None:
    outputs = [
        triton.InferRequestedOutput("OUTPUT0", binary_data=True),
        triton.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("add_sub", add_sub_inputs(A, B, (True, False)), outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert by_name["OUTPUT0"]["parameters"]["binary_data_size"] == A.nbytes
    assert by_name["OUTPUT1"]["data"] == (A - B).ravel().tolist()


def test_requested_output_subset(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "add_sub", add_sub_inputs(A, B), outputs=[triton.InferRequestedOutput("OUTPUT1")]
    )
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]


def test_request_id_round_trips(client: triton.InferenceServerClient) -> None:
    result = client.infer("add_sub", add_sub_inputs(A, B), request_id="my-request-42")
    assert result.get_response()["id"] == "my-request-42"
    result = client.infer("add_sub", add_sub_inputs(A, B))
    assert "id" not in result.get_response()


def sample(datatype: str) -> np.ndarray:
    """Two rows of values that probe the edges of each datatype."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        items = [b"", b"plain", "h\u00e9llo \u2713".encode(), b"a,b", b"x" * 300, b"end"]
        return np.array(items, dtype=np.object_).reshape(2, 3)
    dtype = np.dtype(triton.triton_to_np_dtype(datatype))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max - 1, info.min + 2]
    else:
        info_f = np.finfo(dtype)
        values = [info_f.min, info_f.max, 0.0, -1.5, float(info_f.tiny), 3.140625]
    return np.array(values, dtype=dtype).reshape(2, 3)


def identity_cases() -> list[tuple[str, bool]]:
    # tritonclient also sends FP16 as JSON numbers when asked; the server takes them.
    return [(datatype, binary) for datatype in IDENTITY_MODELS for binary in (True, False)]


@pytest.mark.parametrize(
    ("datatype", "binary"),
    identity_cases(),
    ids=[f"{d}-{'binary' if b else 'json'}" for d, b in identity_cases()],
)
def test_every_datatype_round_trips(
    client: triton.InferenceServerClient, datatype: str, binary: bool
) -> None:
    data = sample(datatype)
    tensor = triton.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [triton.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = client.infer(IDENTITY_MODELS[datatype], [tensor], outputs=outputs)
    got = result.as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BYTES":
        # tritonclient gives bytes items for binary data, and str items for JSON data.
        items = [x if binary else x.encode() for x in got.ravel().tolist()]
        assert items == data.ravel().tolist()
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


def test_fp16_json_output_is_float_numbers(client: triton.InferenceServerClient) -> None:
    data = np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)
    tensor = triton.InferInput("INPUT0", [1, 3], "FP16")
    tensor.set_data_from_numpy(data, binary_data=True)
    outputs = [triton.InferRequestedOutput("OUTPUT0", binary_data=False)]
    result = client.infer("identity_fp16", [tensor], outputs=outputs)
    assert result.get_response()["outputs"][0]["data"] == [0.5, -2.0, 65504.0]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def error_of(call: object, *args: object, **kwargs: object) -> InferenceServerException:
    assert callable(call)
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


def test_wrong_shape(client: triton.InferenceServerClient) -> None:
    a = np.ones((2, 3), dtype=np.float32)
    err = error_of(client.infer, "add_sub", add_sub_inputs(a, a))
    assert err.status() == "400"
    assert "INPUT0" in err.message() and "[2, 3]" in err.message() and "[-1, 4]" in err.message()


def test_batch_over_max_batch_size(client: triton.InferenceServerClient) -> None:
    a = np.ones((9, 4), dtype=np.float32)
    err = error_of(client.infer, "add_sub", add_sub_inputs(a, a))
    assert err.status() == "400"
    assert "max_batch_size" in err.message()


def test_wrong_datatype(client: triton.InferenceServerClient) -> None:
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton.InferInput(name, [1, 4], "FP64")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float64))
        tensors.append(tensor)
    err = error_of(client.infer, "add_sub", tensors)
    assert err.status() == "400"
    assert "FP64" in err.message() and "FP32" in err.message()


def test_missing_input_and_unknown_output(client: triton.InferenceServerClient) -> None:
    err = error_of(client.infer, "add_sub", add_sub_inputs(A, B)[:1])
    assert err.status() == "400"
    assert "INPUT1" in err.message()
    err = error_of(
        client.infer,
        "add_sub",
        add_sub_inputs(A, B),
        outputs=[triton.InferRequestedOutput("OUTPUT9")],
    )
    assert err.status() == "400"
    assert "OUTPUT9" in err.message()


def test_unknown_model_and_version(client: triton.InferenceServerClient) -> None:
    err = error_of(client.infer, "no_such_model", add_sub_inputs(A, B))
    assert err.status() == "404"
    assert "no_such_model" in err.message()
    err = error_of(client.infer, "add_sub", add_sub_inputs(A, B), model_version="3")
    assert err.status() == "404"
    assert "version 3" in err.message()
    assert error_of(client.get_model_metadata, "no_such_model").status() == "404"
    assert error_of(client.get_model_config, "add_sub", "3").status() == "404"


def test_broken_model_is_unavailable(client: triton.InferenceServerClient) -> None:
    err = error_of(client.infer, "broken", add_sub_inputs(A, B))
    assert err.status() == "503"
    assert "max_batch_sise" in err.message()


def test_repository_index_shows_the_broken_models_reason(
    client: triton.InferenceServerClient,
) -> None:
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert {"add_sub", "mlp", "slow", "broken", *IDENTITY_MODELS.values()} == set(index)
    assert index["add_sub"]["state"] == "READY"
    assert index["add_sub"]["version"] == "1"
    broken = index["broken"]
    assert broken["state"] == "UNAVAILABLE"
    assert "broken/model.yaml" in broken["reason"]
    assert "max_batch_sise" in broken["reason"]
    assert "unknown field" in broken["reason"]


def test_statistics_count_the_inferences(client: triton.InferenceServerClient) -> None:
    def stats() -> dict[str, object]:
        found = client.get_inference_statistics("mlp")["model_stats"]
        assert [(s["name"], s["version"]) for s in found] == [("mlp", "1")]
        return found[0]

    before = stats()
    data = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    tensor = triton.InferInput("INPUT0", [3, 16], "FP32")
    tensor.set_data_from_numpy(data)
    for _ in range(4):
        assert client.infer("mlp", [tensor]).as_numpy("OUTPUT0").shape == (3, 10)
    bad = triton.InferInput("INPUT0", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    error_of(client.infer, "mlp", [bad])
    after = stats()

    assert after["inference_count"] - before["inference_count"] == 12  # type: ignore[operator]
    assert after["execution_count"] - before["execution_count"] == 4  # type: ignore[operator]
    ok_before, ok_after = before["inference_stats"], after["inference_stats"]  # type: ignore[index]
    assert ok_after["success"]["count"] - ok_before["success"]["count"] == 4
    assert ok_after["fail"]["count"] - ok_before["fail"]["count"] == 1
    assert ok_after["success"]["ns"] > ok_before["success"]["ns"]
    assert ok_after["compute_infer"]["count"] - ok_before["compute_infer"]["count"] == 4
    assert after["last_inference"] >= before["last_inference"]  # type: ignore[operator]
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])  # type: ignore[attr-defined]
    every = client.get_inference_statistics()["model_stats"]
    assert {"add_sub", "mlp"} <= {s["name"] for s in every}
    assert error_of(client.get_inference_statistics, "no_such_model").status() == "404"


def test_unload_and_load_through_the_client(own_server: Any) -> None:
    with connect(own_server.url) as client:
        assert client.is_model_ready("add_sub")
        client.unload_model("add_sub")
        assert not client.is_model_ready("add_sub")
        err = error_of(client.infer, "add_sub", add_sub_inputs(A, B))
        assert err.status() == "503"
        assert "add_sub" in err.message()
        index = {r["name"]: r for r in client.get_model_repository_index()}
        assert index["add_sub"]["state"] == "UNAVAILABLE"
        assert client.is_model_ready("mlp")  # the others keep serving

        client.load_model("add_sub")
        assert client.is_model_ready("add_sub")
        result = client.infer("add_sub", add_sub_inputs(A, B))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)

        # The broken model stays broken, with its reason, and the load says why.
        err = error_of(client.load_model, "broken")
        assert err.status() == "400"
        assert "max_batch_sise" in err.message()
        assert error_of(client.load_model, "no_such_model").status() == "404"
        assert error_of(client.unload_model, "no_such_model").status() == "404"
        err = error_of(client.load_model, "add_sub", config='{"max_batch_size": 2}')
        assert err.status() == "501"


def test_concurrent_requests_each_get_their_own_rows(server: str) -> None:
    """Requests batched together on the server are split back to the right clients."""
    with triton.InferenceServerClient(
        server.removeprefix("http://"), concurrency=8, network_timeout=10
    ) as client:
        rng = np.random.default_rng(1)
        sent = []
        for i in range(24):
            rows = 1 + i % 3
            a = rng.standard_normal((rows, 4)).astype(np.float32)
            b = rng.standard_normal((rows, 4)).astype(np.float32)
            sent.append((a, b, client.async_infer("add_sub", add_sub_inputs(a, b))))
        for a, b, pending in sent:
            result = pending.get_result(timeout=10)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
