"""TensorFlow Serving's gRPC API (PredictionService, ModelService) against a real
``modelport serve`` process, on the same port as KServe v2.

The client stubs: ``tensorflow-serving-api``'s generated modules import TensorFlow
itself, too big to install here, so the same public protos modelport serves are
compiled into ``tfs_client`` (``scripts/gen_protos.py --client``), registering in
protobuf's default pool as the real package's modules do; ``tfs_client.`` is the only
difference in the imports. ``make_tensor_proto`` and ``make_ndarray`` below stand in
for ``tf.make_tensor_proto`` and ``tf.make_ndarray``, following TensorFlow's rule for
when ``tensor_content`` is used (more than one value, of a type other than bool and
string).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tfs_client.tensorflow.core.framework import tensor_pb2, types_pb2
from tfs_client.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from support.builders import add_sub_onnx, write_model

pytestmark = pytest.mark.timeout(30)

SLOW_DELAY_MS = 150

FACE_MODEL_PY = """\
import numpy as np

# A stand-in for a face-embedding network: mean-pool the image, project, L2-normalise.
PROJECTION = np.array(
    [[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 3.0]], dtype=np.float32
)


class Model:
    def predict(self, inputs):
        phase = inputs["phase"]
        if phase.shape != () or phase.dtype != np.bool_ or bool(phase):
            raise ValueError(f"phase must be the scalar False, got {phase!r}")
        pooled = inputs["in"].mean(axis=(1, 2)) @ PROJECTION
        return {"out": pooled / np.linalg.norm(pooled, axis=1, keepdims=True)}
"""
PROJECTION = np.array(
    [[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.0, 3.0]], dtype=np.float32
)
A = np.array([[1.0, 2.0, 3.0, 4.0], [-1.5, 0.0, 2.25, 8.0]], dtype=np.float32)
B = np.array([[0.5, 0.5, 0.5, 0.5], [2.0, -3.0, 0.25, 1.0]], dtype=np.float32)

# numpy dtype -> TF DataType, and the typed list each travels in (as TensorFlow writes).
TF_TYPES = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.float16): (types_pb2.DT_HALF, "half_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
NUMPY_TYPES = {tf: (dtype, field) for dtype, (tf, field) in TF_TYPES.items()}


def make_tensor_proto(values: Any, dtype: Any = None) -> tensor_pb2.TensorProto:
    """``tf.make_tensor_proto``'s encoding: strings in string_val; more than one value
    of a numeric type in tensor_content; otherwise the typed list."""
    array = np.asarray(values, dtype=dtype)
    proto = tensor_pb2.TensorProto()
    proto.tensor_shape.SetInParent()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else v.encode() for v in array.flat)
        return proto
    proto.dtype = TF_TYPES[array.dtype][0]
    if array.size > 1 and array.dtype != np.bool_:
        proto.tensor_content = array.astype(array.dtype.newbyteorder("<")).tobytes()
    else:
        typed(proto, array)
    return proto


def typed(proto: tensor_pb2.TensorProto, array: np.ndarray) -> tensor_pb2.TensorProto:
    """Put ``array``'s values in its dtype's typed list."""
    field = TF_TYPES[array.dtype][1]
    flat = array.ravel()
    getattr(proto, field).extend((flat.view(np.uint16) if field == "half_val" else flat).tolist())
    return proto


def typed_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto of ``array`` in its typed list, whatever its size."""
    proto = make_tensor_proto(array)
    proto.ClearField("tensor_content")
    return typed(proto, array) if not getattr(proto, TF_TYPES[array.dtype][1]) else proto


def make_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """``tf.make_ndarray``: tensor_content, string_val or a typed list, as an array."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.dtype == types_pb2.DT_STRING:
        array = np.empty(len(proto.string_val), dtype=np.object_)
        array[:] = list(proto.string_val)
        return array.reshape(shape)
    dtype, field = NUMPY_TYPES[proto.dtype]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).reshape(shape)
    values = np.array(getattr(proto, field))
    if field == "half_val":
        return values.astype(np.uint16).view(np.float16).reshape(shape)
    return values.astype(dtype).reshape(shape)


def free_grpc_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tf_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfs-grpc-repository")
    write_model(
        root,
        "facenet",
        """\
        runtime: python
        max_batch_size: 0
        inputs: [{name: in, datatype: FP32, shape: [-1, 8, 8, 3]},
                 {name: phase, datatype: BOOL, shape: []}]
        outputs: [{name: out, datatype: FP32, shape: [-1, 4]}]
        """,
        {"1/model.py": FACE_MODEL_PY},
    )
    folder = write_model(
        root,
        "labelled",
        """\
        runtime: onnx
        max_batch_size: 8
        version_policy: {all: true}
        version_labels: {stable: 1, canary: 2}
        """,
    )
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    add_sub_onnx(folder / "2" / "model.onnx", width=3)
    fake = {"1/README": "the fake runtime echoes input i to output i"}
    kinds = ["FP64", "FP16", "INT8", "INT16", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
    kinds += ["BOOL", "BYTES"]
    specs = ", ".join(f"{{name: {k.lower()}, datatype: {k}, shape: [2]}}" for k in kinds)
    outs = ", ".join(f"{{name: {k.lower()}_out, datatype: {k}, shape: [2]}}" for k in kinds)
    write_model(
        root,
        "kinds",
        f"runtime: fake\nmax_batch_size: 4\ninputs: [{specs}]\noutputs: [{outs}]\n",
        fake,
    )
    write_model(
        root,
        "slow",
        f"""\
        runtime: fake
        max_batch_size: 1
        inputs: [{{name: x, datatype: FP32, shape: [2]}}]
        outputs: [{{name: y, datatype: FP32, shape: [2]}}]
        batching: {{max_queue_size: 2}}
        parameters: {{delay_ms: {SLOW_DELAY_MS}}}
        """,
        fake,
    )
    write_model(root, "broken", "runtime: onnx\nmax_batch_sise: 8\n", {"1/README": "never loads"})
    return root


@pytest.fixture(scope="module")
def target(server_factory: Any, tf_repo: Path) -> Iterator[str]:
    port = free_grpc_port()
    proc = server_factory(repo=tf_repo, grpc_port=port)
    yield f"127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as c:
        yield c


@pytest.fixture
def predictions(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def add_sub_request(
    model: str = "labelled", a: np.ndarray = A, b: np.ndarray = B, version: int | None = 1
) -> Any:
    """A Predict of add_sub; ``labelled`` version 1 adds rows of 4, version 2 rows of 3."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["INPUT0"].CopyFrom(make_tensor_proto(a))
    request.inputs["INPUT1"].CopyFrom(make_tensor_proto(b))
    return request


def rpc_error(call: Any, request: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10, **kwargs)
    return caught.value


def assert_error(exc: grpc.RpcError, code: grpc.StatusCode, *needles: str) -> None:
    assert exc.code() == code, exc.details()
    for needle in needles:
        assert needle in exc.details(), exc.details()


# -- the Flask face-recognition client, unchanged ----------------------------------------


def test_face_recognition_client(target: str) -> None:
    """The known Flask app's call: model_spec.name from its config, inputs ``in`` (a
    float32 image batch) and ``phase`` (bool False), output ``out``, an insecure
    channel and a 10 s timeout."""
    model_name = "facenet"  # from the app's config
    images = np.random.default_rng(7).random((3, 8, 8, 3), dtype=np.float32)

    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["in"].CopyFrom(make_tensor_proto(images, dtype=np.float32))
    request.inputs["phase"].CopyFrom(make_tensor_proto(False, dtype=bool))
    result = stub.Predict(request, 10.0)
    embeddings = make_ndarray(result.outputs["out"])
    channel.close()

    pooled = images.mean(axis=(1, 2)) @ PROJECTION
    want = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert embeddings.shape == (3, 4)
    np.testing.assert_allclose(embeddings, want, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    out = result.outputs["out"]
    assert out.dtype == types_pb2.DT_FLOAT
    assert out.tensor_content and not out.float_val  # as TF Serving answers
    assert list(result.outputs) == ["out"]
    assert result.model_spec.name == "facenet"
    assert result.model_spec.version.value == 1
    assert result.model_spec.signature_name == "serving_default"


# -- tensors: typed fields, tensor_content, strings ----------------------------------------


def test_tensor_content_inputs(predictions: Any) -> None:
    result = predictions.Predict(add_sub_request(), timeout=10)
    np.testing.assert_array_equal(make_ndarray(result.outputs["OUTPUT0"]), A + B)
    np.testing.assert_array_equal(make_ndarray(result.outputs["OUTPUT1"]), A - B)
    assert [d.size for d in result.outputs["OUTPUT0"].tensor_shape.dim] == [2, 4]


def test_typed_field_inputs_and_broadcast(predictions: Any) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "labelled"
    request.model_spec.version.value = 1
    request.inputs["INPUT0"].CopyFrom(typed_tensor(A))
    # One value fills the tensor, as in TensorFlow.
    request.inputs["INPUT1"].CopyFrom(make_tensor_proto(np.float32(0.5)))
    request.inputs["INPUT1"].tensor_shape.dim.add(size=2)
    request.inputs["INPUT1"].tensor_shape.dim.add(size=4)
    assert not request.inputs["INPUT0"].tensor_content
    result = predictions.Predict(request, timeout=10)
    np.testing.assert_array_equal(make_ndarray(result.outputs["OUTPUT0"]), A + 0.5)


KINDS = {
    "fp64": np.array([[1.5, -2.25]], np.float64),
    "fp16": np.array([[0.5, -1.0]], np.float16),
    "int8": np.array([[-128, 127]], np.int8),
    "int16": np.array([[-300, 300]], np.int16),
    "int64": np.array([[-(2**40), 2**40]], np.int64),
    "uint8": np.array([[0, 255]], np.uint8),
    "uint16": np.array([[0, 65535]], np.uint16),
    "uint32": np.array([[0, 2**32 - 1]], np.uint32),
    "uint64": np.array([[0, 2**64 - 1]], np.uint64),
    "bool": np.array([[True, False]]),
    "bytes": np.array([[b"caf\xc3\xa9", b"\x00\xffraw"]], dtype=np.object_),
}


@pytest.mark.parametrize("encoding", ["typed", "tensor_content"])
def test_every_dtype_round_trips(predictions: Any, encoding: str) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kinds"
    for name, array in KINDS.items():
        if name == "bytes":
            proto = make_tensor_proto(array)
        elif encoding == "typed":
            proto = typed_tensor(array)
        else:
            proto = make_tensor_proto(array)
            proto.ClearField(TF_TYPES[array.dtype][1])
            proto.tensor_content = array.astype(array.dtype.newbyteorder("<")).tobytes()
        request.inputs[name].CopyFrom(proto)
    result = predictions.Predict(request, timeout=10)
    assert set(result.outputs) == {f"{name}_out" for name in KINDS}
    for name, array in KINDS.items():
        out = result.outputs[f"{name}_out"]
        assert out.dtype == request.inputs[name].dtype
        got = make_ndarray(out)
        assert got.dtype == array.dtype, name
        np.testing.assert_array_equal(got, array)
        if name == "bytes":
            assert list(out.string_val) == list(array.ravel()) and not out.tensor_content
        else:
            assert out.tensor_content, name  # numbers answer in tensor_content


def test_output_filter(predictions: Any) -> None:
    request = add_sub_request()
    request.output_filter.append("OUTPUT1")
    result = predictions.Predict(request, timeout=10)
    assert list(result.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(make_ndarray(result.outputs["OUTPUT1"]), A - B)
    request.output_filter[:] = ["nope"]
    assert_error(rpc_error(predictions.Predict, request), grpc.StatusCode.INVALID_ARGUMENT, "nope")


# -- versions and labels -------------------------------------------------------------------


def test_versions_and_labels(predictions: Any) -> None:
    a3, b3 = A[:, :3].copy(), B[:, :3].copy()
    latest = predictions.Predict(add_sub_request(a=a3, b=b3, version=None), timeout=10)
    assert latest.model_spec.version.value == 2
    for choice, a, b, version in [(1, A, B, 1), (2, a3, b3, 2), ("stable", A, B, 1),
                                   ("canary", a3, b3, 2)]:  # fmt: skip
        request = add_sub_request(a=a, b=b, version=None)
        if isinstance(choice, int):
            request.model_spec.version.value = choice
        else:
            request.model_spec.version_label = choice
        result = predictions.Predict(request, timeout=10)
        assert result.model_spec.version.value == version
        np.testing.assert_array_equal(make_ndarray(result.outputs["OUTPUT0"]), a + b)
    request = add_sub_request()
    request.model_spec.version.value = 7
    assert_error(rpc_error(predictions.Predict, request), grpc.StatusCode.NOT_FOUND, "7")
    request.model_spec.version_label = "beta"
    assert_error(rpc_error(predictions.Predict, request), grpc.StatusCode.NOT_FOUND, "beta")
    request.model_spec.name = "kinds"
    assert_error(
        rpc_error(predictions.Predict, request),
        grpc.StatusCode.NOT_FOUND,
        "no version labels configured",
    )


# -- metadata and status -------------------------------------------------------------------


def test_get_model_metadata(predictions: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "labelled"
    request.model_spec.version.value = 1
    response = predictions.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "labelled"
    assert response.model_spec.version.value == 1
    any_map = response.metadata["signature_def"]
    assert any_map.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert any_map.Unpack(signatures)
    assert list(signatures.signature_def) == ["serving_default"]
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert sorted(signature.inputs) == ["INPUT0", "INPUT1"]
    info = signature.inputs["INPUT0"]
    assert (info.name, info.dtype) == ("INPUT0", types_pb2.DT_FLOAT)
    assert [d.size for d in info.tensor_shape.dim] == [-1, 4]
    assert sorted(signature.outputs) == ["OUTPUT0", "OUTPUT1"]

    request.model_spec.version_label = "canary"
    canary = predictions.GetModelMetadata(request, timeout=10)
    assert canary.model_spec.version.value == 2

    face = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    face.model_spec.name = "facenet"
    face_map = get_model_metadata_pb2.SignatureDefMap()
    predictions.GetModelMetadata(face, timeout=10).metadata["signature_def"].Unpack(face_map)
    phase = face_map.signature_def["serving_default"].inputs["phase"]
    assert phase.dtype == types_pb2.DT_BOOL
    assert phase.HasField("tensor_shape") and not phase.tensor_shape.dim  # a scalar

    bare = get_model_metadata_pb2.GetModelMetadataRequest()
    bare.model_spec.name = "labelled"
    err = rpc_error(predictions.GetModelMetadata, bare)
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "metadata_field", "signature_def")
    bare.metadata_field.append("graph")
    err = rpc_error(predictions.GetModelMetadata, bare)
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "graph")
    request.model_spec.name = "nope"
    assert_error(
        rpc_error(predictions.GetModelMetadata, request), grpc.StatusCode.NOT_FOUND, "nope"
    )


def test_get_model_status(models: Any) -> None:
    ok = get_model_status_pb2.ModelVersionStatus
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "labelled"
    response = models.GetModelStatus(request, timeout=10)
    rows = [(s.version, s.state, s.status.error_code) for s in response.model_version_status]
    assert sorted(rows) == [(1, ok.AVAILABLE, 0), (2, ok.AVAILABLE, 0)]
    request.model_spec.version.value = 2
    (only,) = models.GetModelStatus(request, timeout=10).model_version_status
    assert (only.version, only.state) == (2, ok.AVAILABLE)
    request.model_spec.version_label = "stable"
    (stable,) = models.GetModelStatus(request, timeout=10).model_version_status
    assert stable.version == 1

    broken = get_model_status_pb2.GetModelStatusRequest()
    broken.model_spec.name = "broken"
    (entry,) = models.GetModelStatus(broken, timeout=10).model_version_status
    assert entry.state == ok.END
    assert entry.status.error_code == 2  # tensorflow.error.UNKNOWN
    assert "max_batch_sise" in entry.status.error_message

    request.model_spec.name = "nope"
    assert_error(rpc_error(models.GetModelStatus, request), grpc.StatusCode.NOT_FOUND, "nope")
    request.model_spec.name = "labelled"
    request.model_spec.version.value = 9
    assert_error(rpc_error(models.GetModelStatus, request), grpc.StatusCode.NOT_FOUND, "9")


# -- errors --------------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(predictions: Any) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    request = add_sub_request()
    request.inputs["INPUT0"].CopyFrom(make_tensor_proto(A.astype(np.float64)))
    assert_error(rpc_error(predictions.Predict, request), invalid, "FP64", "FP32")

    request = add_sub_request()
    request.inputs["INPUT0"].tensor_content = request.inputs["INPUT0"].tensor_content[:-4]
    assert_error(rpc_error(predictions.Predict, request), invalid, "INPUT0", "bytes")

    request = add_sub_request()
    request.inputs["INPUT0"].CopyFrom(typed_tensor(A))
    request.inputs["INPUT0"].float_val.append(1.0)
    assert_error(rpc_error(predictions.Predict, request), invalid, "needs 8", "got 9")

    request = add_sub_request()
    request.inputs["INPUT0"].ClearField("tensor_content")
    request.inputs["INPUT0"].double_val.extend(A.ravel().tolist())
    assert_error(rpc_error(predictions.Predict, request), invalid, "float_val", "double_val")

    request = add_sub_request()
    del request.inputs["INPUT1"]
    assert_error(rpc_error(predictions.Predict, request), invalid, "INPUT1", "missing")

    request = add_sub_request()
    request.inputs["INPUT0"].CopyFrom(make_tensor_proto(A[:, :3]))
    assert_error(rpc_error(predictions.Predict, request), invalid, "shape")

    request = add_sub_request()
    request.inputs["INPUT0"].dtype = types_pb2.DT_COMPLEX64
    assert_error(rpc_error(predictions.Predict, request), invalid, "DT_COMPLEX64")

    request = add_sub_request()
    request.model_spec.signature_name = "classify_faces"
    assert_error(rpc_error(predictions.Predict, request), invalid, "classify_faces")
    for accepted in ("serving_default", "labelled"):
        request.model_spec.signature_name = accepted
        assert predictions.Predict(request, timeout=10).outputs

    request = add_sub_request(model="")
    assert_error(rpc_error(predictions.Predict, request), invalid, "model_spec.name")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "labelled"
    assert_error(rpc_error(predictions.Predict, request), invalid, "no inputs")


def test_unknown_and_unloaded_models(predictions: Any) -> None:
    err = rpc_error(predictions.Predict, add_sub_request(model="nope"))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "nope")
    err = rpc_error(predictions.Predict, add_sub_request(model="broken"))
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "broken")


def test_overload_is_resource_exhausted(predictions: Any) -> None:
    """``slow`` runs one request at a time and queues two: a burst overflows it."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
    calls = [predictions.Predict.future(request, timeout=20) for _ in range(8)]
    rejected: list[grpc.RpcError] = []
    for call in calls:
        try:
            call.result()
        except grpc.RpcError as exc:
            rejected.append(exc)
    assert rejected, "the slow model's queue never filled"
    assert len(rejected) < len(calls)
    for exc in rejected:
        assert_error(exc, grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")


@pytest.mark.parametrize(
    ("method", "needle"),
    [
        ("/tensorflow.serving.PredictionService/Classify", "Predict"),
        ("/tensorflow.serving.PredictionService/Regress", "Predict"),
        ("/tensorflow.serving.PredictionService/MultiInference", "Predict"),
        ("/tensorflow.serving.ModelService/HandleReloadConfigRequest", "repository"),
    ],
)
def test_unoffered_methods_are_unimplemented(
    channel: grpc.Channel, method: str, needle: str
) -> None:
    """Their messages (tf.Example) are not in tfs_client: sent as bytes, never parsed."""
    call = channel.unary_unary(method)
    err = rpc_error(call, b"\x0a\x02\x0a\x00")
    assert_error(err, grpc.StatusCode.UNIMPLEMENTED, "not supported", needle)


# -- routing by model-id, and the same port as KServe v2 ------------------------------------


def test_model_id_metadata_wins(predictions: Any, models: Any) -> None:
    route = (("model-id", "labelled"),)
    request = add_sub_request(model="some-router-name")
    result = predictions.Predict(request, timeout=10, metadata=route)
    assert result.model_spec.name == "labelled"
    np.testing.assert_array_equal(make_ndarray(result.outputs["OUTPUT0"]), A + B)
    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert predictions.GetModelMetadata(meta, timeout=10, metadata=route).model_spec.name == (
        "labelled"
    )
    status = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(), timeout=10, metadata=route
    )
    assert len(status.model_version_status) == 2
    err = rpc_error(predictions.Predict, add_sub_request(), metadata=(("model-id", "nope"),))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "nope")


def test_kserve_v2_on_the_same_port(target: str, predictions: Any) -> None:
    with triton.InferenceServerClient(target) as client:
        assert client.is_model_ready("labelled", "1")
        inputs = []
        for name, array in (("INPUT0", A), ("INPUT1", B)):
            tensor = triton.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        v2 = client.infer("labelled", inputs, model_version="1").as_numpy("OUTPUT0")
    request = add_sub_request()
    tfs = make_ndarray(predictions.Predict(request, timeout=10).outputs["OUTPUT0"])
    np.testing.assert_array_equal(v2, tfs)
