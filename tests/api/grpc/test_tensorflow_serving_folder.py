"""A TF Serving model folder, ``<name>/<version>/saved_model.pb`` and ``variables/`` with
no model.yaml, served unchanged through every API: KServe v2 over HTTP and gRPC (the
Triton clients), TF Serving's REST API (httpx) and its gRPC API (the ``tfs_client``
stubs, see test_tfserving_grpc.py). The SavedModel is built by TensorFlow in a child
process (``tests/support/tf_builders.py``), whose outputs the answers are checked against.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tfs_client.tensorflow.core.framework import tensor_pb2, types_pb2
from tfs_client.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from support.tf_builders import SIGNATURES, TEXT, B, W, X, build_saved_model

pytestmark = pytest.mark.timeout(120)

MODEL = "classifier"


@dataclass
class Served:
    url: str
    target: str
    expected: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def served(server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``classifier``: TF Serving's layout, two versions, no model.yaml. ``text``: the same
    SavedModel with a model.yaml serving its ``text`` signature."""
    root = tmp_path_factory.mktemp("tf-serving-repository")
    expected = build_saved_model(root / MODEL / "1")
    shutil.copytree(root / MODEL / "1", root / MODEL / "2")
    shutil.copytree(root / MODEL / "1", root / "text" / "1")
    (root / "text" / "model.yaml").write_text(
        "runtime: tensorflow\nmax_batch_size: 8\nparameters: {signature_name: text}\n"
    )
    port = _free_port()
    process = server_factory(repo=root, grpc_port=port)
    yield Served(process.url, f"127.0.0.1:{port}", expected)
    process.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _float_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """As ``tf.make_tensor_proto`` writes several floats: in tensor_content."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = array.astype("<f4").tobytes()
    return proto


def _floats(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    assert proto.dtype == types_pb2.DT_FLOAT
    return np.frombuffer(proto.tensor_content, "<f4").reshape(shape)


@pytest.fixture
def stub(served: Served) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(served.target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict(signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(_float_tensor(X))
    return request


def test_v2_http(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    x = httpclient.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    result = client.infer(MODEL, [x])
    assert result.get_response()["model_version"] == "2"  # the latest, as TF Serving serves
    np.testing.assert_allclose(result.as_numpy("y"), served.expected["y"], rtol=1e-6)


def test_v2_grpc_and_the_default_batch_size(served: Served) -> None:
    with grpcclient.InferenceServerClient(served.target) as client:
        config = client.get_model_config(MODEL, as_json=True)["config"]
        assert config["platform"] == "tensorflow_savedmodel"
        assert int(config["max_batch_size"]) == 128
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        result = client.infer(MODEL, [x], model_version="2")
        np.testing.assert_allclose(result.as_numpy("y"), served.expected["y"], rtol=1e-6)


def test_tfserving_rest_predict_and_metadata(served: Served) -> None:
    rows = httpx.post(
        f"{served.url}/v1/models/{MODEL}:predict", json={"instances": X.tolist()}
    ).json()
    np.testing.assert_allclose(rows["predictions"], served.expected["y"], rtol=1e-6)
    body = {"signature_name": "doubled", "inputs": X.tolist()}
    columns = httpx.post(f"{served.url}/v1/models/{MODEL}/versions/2:predict", json=body)
    np.testing.assert_allclose(columns.json()["outputs"], served.expected["doubled"], rtol=1e-6)
    meta = httpx.get(f"{served.url}/v1/models/{MODEL}/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "4"]
    status = httpx.get(f"{served.url}/v1/models/{MODEL}").json()
    assert [s["state"] for s in status["model_version_status"]] == ["AVAILABLE"]


def test_tfserving_rest_batch_size_limit(served: Served) -> None:
    url = f"{served.url}/v1/models/{MODEL}:predict"
    full = httpx.post(url, json={"instances": np.ones((128, 4)).tolist()})
    assert full.status_code == 200 and len(full.json()["predictions"]) == 128
    over = httpx.post(url, json={"instances": np.ones((129, 4)).tolist()})
    assert over.status_code == 400
    assert "max_batch_size" in over.json()["error"]


def test_tfserving_grpc_predict(
    served: Served, stub: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    response = stub.Predict(_predict(), timeout=30)
    np.testing.assert_allclose(_floats(response.outputs["y"]), served.expected["y"], rtol=1e-6)
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    # The typed list, as tf.make_tensor_proto writes a lone value: it fills the shape.
    request = _predict()
    request.inputs["x"].ClearField("tensor_content")
    request.inputs["x"].float_val.append(1.0)
    ones = _floats(stub.Predict(request, timeout=30).outputs["y"])
    np.testing.assert_allclose(ones, np.ones_like(X) @ W + B, rtol=1e-5)


def test_tfserving_grpc_signature_selection(
    served: Served, stub: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    response = stub.Predict(_predict("doubled"), timeout=30)
    np.testing.assert_allclose(
        _floats(response.outputs["y"]), served.expected["doubled"], rtol=1e-6
    )
    assert response.model_spec.signature_name == "doubled"
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(_predict("nope"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no signature 'nope'" in str(raised.value.details())
    assert str(SIGNATURES) in str(raised.value.details())
    # A signature with other tensors: refused, naming how to serve it.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "text"
    request.inputs["x"].CopyFrom(_float_tensor(X))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature_name: text" in str(raised.value.details())


def test_tfserving_grpc_metadata_and_status(served: Served) -> None:
    with grpc.insecure_channel(served.target) as channel:
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = MODEL
        meta = prediction.GetModelMetadata(request, timeout=30)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert signature.inputs["x"].dtype == types_pb2.DT_FLOAT
        assert [d.size for d in signature.outputs["y"].tensor_shape.dim] == [-1, 3]
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = MODEL
        (version,) = models.GetModelStatus(status, timeout=30).model_version_status
        assert version.version == 2
        assert version.state == get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


def test_strings_through_tfserving_grpc(
    served: Served, stub: prediction_service_pb2_grpc.PredictionServiceStub
) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text"  # the same SavedModel, its 'text' signature served
    request.inputs["text"].dtype = types_pb2.DT_STRING
    request.inputs["text"].tensor_shape.dim.add(size=len(TEXT))
    request.inputs["text"].string_val.extend(TEXT.tolist())
    response = stub.Predict(request, timeout=30)
    upper = response.outputs["upper"]
    assert upper.dtype == types_pb2.DT_STRING
    assert list(upper.string_val) == served.expected["upper"].tolist()
    length = response.outputs["length"]
    assert length.dtype == types_pb2.DT_INT32
    lengths = np.frombuffer(length.tensor_content, "<i4")
    np.testing.assert_array_equal(lengths, served.expected["length"])
