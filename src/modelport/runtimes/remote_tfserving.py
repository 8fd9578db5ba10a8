"""The TF Serving remote client for the ``remote`` runtime (``protocol: tfserving``):
``tensorflow.serving.PredictionService`` and ``ModelService`` over gRPC, as TF Serving
serves them on its port 8500.

``load`` asks ``GetModelStatus`` whether a version is AVAILABLE and reads the signature
from ``GetModelMetadata`` (``remote.signature``, default ``serving_default``). Numbers
travel in ``tensor_content`` (little-endian, row-major: Triton's binary layout), strings
in ``string_val``; an answer in the typed lists (``float_val``...) is read too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.errors import ModelportError
from modelport.protos.datatypes import TF_DATATYPES, TF_VALUES, V2_DATATYPES
from modelport.protos.tensorflow.core.framework import tensor_pb2
from modelport.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from modelport.runtimes.remote_client import (
    GrpcChannel,
    RemoteErrors,
    RemoteMetadata,
    RemoteTensor,
)
from modelport.spec import RemoteSpec
from modelport.tensors import element_count, numpy_dtype

DEFAULT_SIGNATURE = "serving_default"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


class TfServingClient:
    """TF Serving's Predict, GetModelMetadata and GetModelStatus over gRPC."""

    def __init__(self, remote: RemoteSpec, model: str) -> None:
        self.describe = RemoteErrors(remote, model)
        self.model, self.version = model, remote.pinned_version
        self.signature = remote.signature or DEFAULT_SIGNATURE
        self._grpc = GrpcChannel(remote, self.describe)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._grpc.channel)
        self._status = model_service_pb2_grpc.ModelServiceStub(self._grpc.channel)

    def _spec(self) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model, signature_name=self.signature)
        if self.version:
            spec.version.value = self.version
        return spec

    def metadata(self) -> RemoteMetadata:
        status = self._grpc.call(
            self._status.GetModelStatus,
            get_model_status_pb2.GetModelStatusRequest(model_spec=self._spec()),
            loading=True,
        )
        states = [s.state for s in status.model_version_status]
        if AVAILABLE not in states:
            names = [get_model_status_pb2.ModelVersionStatus.State.Name(s) for s in states]
            raise self.describe.not_ready(f"no version is AVAILABLE ({names})")
        found = self._grpc.call(
            self._predict.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=self._spec(), metadata_field=["signature_def"]
            ),
            loading=True,
        )
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in found.metadata or not found.metadata["signature_def"].Unpack(
            signatures
        ):
            raise self.describe.failed("GetModelMetadata answered no signature_def")
        signature = signatures.signature_def.get(self.signature)
        if signature is None:
            raise self.describe.missing(
                f"no signature '{self.signature}' (it has {sorted(signatures.signature_def)}); "
                "check 'remote.signature'"
            )
        try:
            # A signature's tensors are a map, in no set order: name order is stable.
            return RemoteMetadata(
                tuple(_tensor(n, signature.inputs[n]) for n in sorted(signature.inputs)),
                tuple(_tensor(n, signature.outputs[n]) for n in sorted(signature.outputs)),
            )
        except KeyError as exc:
            raise self.describe.failed(f"a tensor has an unsupported dtype {exc}") from None

    def infer(
        self,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        parameters: Mapping[str, Any],
        trace_headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest(model_spec=self._spec())
        for name, (datatype, array) in inputs.items():
            proto = request.inputs[name]
            proto.dtype = TF_DATATYPES[datatype]
            for size in array.shape:
                proto.tensor_shape.dim.add(size=size)
            if datatype == "BYTES":
                proto.string_val.extend(
                    x if isinstance(x, bytes) else str(x).encode() for x in array.flat
                )
            else:
                proto.tensor_content = encode_tensor(array, datatype)
        response = self._grpc.call(self._predict.Predict, request, extra=trace_headers)
        try:
            return {name: _array(name, proto) for name, proto in response.outputs.items()}
        except (ModelportError, KeyError, ValueError) as exc:
            raise self.describe.failed(f"its answer does not add up: {exc}") from None

    def close(self) -> None:
        self._grpc.close()


def _tensor(name: str, info: Any) -> RemoteTensor:
    shape = tuple(int(d.size) for d in info.tensor_shape.dim)
    return RemoteTensor(name, V2_DATATYPES[info.dtype], shape)


def _array(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    datatype = V2_DATATYPES[proto.dtype]
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if proto.tensor_content:
        return decode_tensor(name, datatype, shape, proto.tensor_content)
    values = list(getattr(proto, TF_VALUES[datatype].field))
    count = element_count(shape)
    if values and len(values) < count:  # TensorFlow pads a short list with its last value
        values += values[-1:] * (count - len(values))
    if datatype == "BYTES":
        array = np.empty(len(values), np.object_)
        array[:] = values
        return array.reshape(shape)
    if datatype == "FP16":
        return np.asarray(values, np.uint16).view(np.float16).reshape(shape)
    return np.asarray(values, numpy_dtype(datatype)).reshape(shape)
