"""Aliases over every protocol, against a real ``modelport serve``: the detector
server's queue names as ``model_type``, KServe v2 over HTTP and gRPC (``model-id``
metadata too), TF Serving's REST and gRPC predict. Class names in ``category_id``."""

from __future__ import annotations

import io
import socket
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tfs_client.tensorflow.core.framework import tensor_pb2, types_pb2
from tfs_client.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from support.builders import add_sub_onnx, write_model

pytestmark = pytest.mark.timeout(60)

BOXES = """\
runtime: python
inputs: [{name: image, datatype: UINT8, shape: [10, 20, 3], codec: image}]
outputs:
  - {name: found, datatype: FP32, shape: [-1, 6], codec: detections,
     detections: {coordinates: input, score_threshold: 0.5}}
"""
BOXES_PY = """\
import numpy as np

class Model:
    def predict(self, inputs):
        return {"found": np.array([[0, 0, 10, 5, 0.9, 1]], np.float32)}
"""
A = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
B = np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, server_factory: Any) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("alias-repo")
    folder = write_model(root, "add_sub", "runtime: onnx\nmax_batch_size: 8\naliases: [sums]\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    files = {"1/model.py": BOXES_PY}
    write_model(
        root, "yolov5", BOXES + "labels: [cat, fish]\naliases: [image_queue_yolov5]\n", files
    )
    write_model(root, "unlabelled", BOXES + "aliases: [image_queue_detectron2]\n", files)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        grpc_port = sock.getsockname()[1]
    proc = server_factory(repo=root, grpc_port=grpc_port)
    return proc.url, f"127.0.0.1:{grpc_port}"


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_predictor_model_type_is_a_queue_name(served: tuple[str, str]) -> None:
    url, _ = served
    for queue, name in (("image_queue_yolov5", "fish"), ("image_queue_detectron2", "1")):
        answer = httpx.post(
            f"{url}/predictor/",
            data={"model_type": queue},
            files={"file": ("a.png", _png(), "image/png")},
        )
        assert answer.status_code == 200, answer.text
        # category_id: the class name from labels, the class number as text without.
        assert answer.json()["predictions"][0]["category_id"] == name


def test_v2_http_and_tf_serving_rest(served: tuple[str, str]) -> None:
    url, _ = served
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": A.ravel().tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": B.ravel().tolist()},
        ]
    }
    answer = httpx.post(f"{url}/v2/models/sums/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == "add_sub"
    assert httpx.get(f"{url}/v2/models/sums").json()["name"] == "add_sub"
    assert httpx.get(f"{url}/v2/models/sums/ready").status_code == 200
    answer = httpx.post(
        f"{url}/v1/models/sums:predict",
        json={"inputs": {"INPUT0": A.tolist(), "INPUT1": B.tolist()}},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]["OUTPUT0"] == (A + B).tolist()


def test_kserve_grpc_and_model_id(served: tuple[str, str]) -> None:
    _, target = served
    client = triton.InferenceServerClient(target)
    inputs = [triton.InferInput(n, [1, 4], "FP32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_data_from_numpy(B)
    result = client.infer("sums", inputs)
    assert result.get_response().model_name == "add_sub"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    result = client.infer("whatever", inputs, headers={"model-id": "sums"})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    assert client.get_model_metadata("sums").name == "add_sub"


def _tensor(values: np.ndarray) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in values.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = values.tobytes()
    return proto


def test_tf_serving_grpc(served: tuple[str, str]) -> None:
    _, target = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "sums"
    request.inputs["INPUT0"].CopyFrom(_tensor(A))
    request.inputs["INPUT1"].CopyFrom(_tensor(B))
    with grpc.insecure_channel(target) as channel:
        result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=10
        )
    out = result.outputs["OUTPUT0"]
    np.testing.assert_array_equal(np.frombuffer(out.tensor_content, np.float32), (A + B).ravel())
