"""TensorFlow Serving's gRPC API (its port 8500), on modelport's one gRPC port, so a
client written against TF Serving only changes the address.

``tensorflow.serving.PredictionService``
    ``Predict`` and ``GetModelMetadata``. ``Classify``, ``Regress`` and
    ``MultiInference`` (tf.Example in, for Estimator signatures) answer UNIMPLEMENTED.
``tensorflow.serving.ModelService``
    ``GetModelStatus``. ``HandleReloadConfigRequest`` answers UNIMPLEMENTED: modelport's
    models come from its repository.

Each method has the shape of the KServe servicer (``servicer.py``): parse, call the
core :class:`~modelport.core.service.InferenceService`, encode, and map errors to the
codes TF Serving answers (NOT_FOUND an unknown model, version or label;
INVALID_ARGUMENT a bad request; UNAVAILABLE a model not loaded; RESOURCE_EXHAUSTED an
overloaded one). The REST compat API's decisions hold here too: ``version_labels`` in
model.yaml name versions, a model has one signature (``serving_default``, also
accepted under the model's own name or empty) except a ``tensorflow`` one, which runs the
signature named (``signature_parameters``), and model states read as TF Serving's.
A call carrying ``model-id`` metadata goes to that model, whatever
``model_spec.name`` says (``servicer.routed_model``).

Tensors
    An input ``TensorProto`` carries its values either in ``tensor_content``
    (little-endian, row-major: the layout of Triton's binary tensors, so
    ``codecs/v2_binary`` reads it) or in the typed list of its dtype (``float_val``,
    ``int_val`` for the narrow integers, ``half_val`` holding FP16 bits, ``string_val``,
    ...). As in TensorFlow, a typed list shorter than the shape is padded with its last
    value, so one value fills a tensor. Outputs are answered as TF Serving answers them:
    ``tensor_content`` for numbers, ``string_val`` for strings.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import numpy as np

from modelport.api.grpc.servicer import Context, maps_errors, routed_model
from modelport.codecs.tfserving_json import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    SIGNATURE_PARAMETER,
    signature_parameters,
    version_status,
)
from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.core.service import InferenceService
from modelport.errors import InvalidInput
from modelport.numbers import natural
from modelport.protos.datatypes import TF_DATATYPES, TF_VALUES, V2_DATATYPES
from modelport.protos.tensorflow.core.framework import (
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from modelport.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from modelport.spec import TensorSpec
from modelport.tensors import (
    DATATYPES,
    InferenceRequest,
    RequestedOutput,
    Tensor,
    checked_count,
    element_count,
)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
SIGNATURE_DEF = "signature_def"

_LISTS = sorted({values.field for values in TF_VALUES.values()})

# Methods modelport does not offer, answered UNIMPLEMENTED without reading their
# messages (the first three carry tf.Example; the .proto files leave them out).
UNSUPPORTED = {
    (PREDICTION_SERVICE, "Classify"): "Classify is not supported: modelport serves TF "
    "Serving's Predict API; send the model's input tensors to Predict",
    (PREDICTION_SERVICE, "Regress"): "Regress is not supported: modelport serves TF "
    "Serving's Predict API; send the model's input tensors to Predict",
    (PREDICTION_SERVICE, "MultiInference"): "MultiInference is not supported: modelport "
    "serves TF Serving's Predict API; send one Predict per model",
    (MODEL_SERVICE, "HandleReloadConfigRequest"): "HandleReloadConfigRequest is not "
    "supported: modelport's models come from its repository; load and unload them with "
    "the KServe v2 repository API",
}


# -- tensors ------------------------------------------------------------------------------


def decode_input(name: str, proto: tensor_pb2.TensorProto, max_elements: int = 0) -> Tensor:
    """One input ``TensorProto`` as a tensor; InvalidInput says what does not add up.
    More than ``max_elements`` elements (0: any) are refused before anything is
    allocated: TensorFlow pads a short value list, so a tiny message can claim a shape of
    any size."""
    datatype = V2_DATATYPES.get(proto.dtype)
    if datatype is None:
        known = ", ".join(types_pb2.DataType.Name(t) for t in V2_DATATYPES)
        raise InvalidInput(
            f"input '{name}': dtype {_dtype_name(proto.dtype)} is not supported; use one of {known}"
        )
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{name}': tensor_shape has unknown_rank; give its dims")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': tensor_shape {list(shape)} has a negative dim")
    checked_count(name, shape, max_elements)
    if proto.tensor_content:
        if datatype == "BYTES":
            raise InvalidInput(f"input '{name}': DT_STRING values go in string_val")
        return Tensor(name, datatype, decode_tensor(name, datatype, shape, proto.tensor_content))
    return Tensor(name, datatype, _from_values(name, datatype, shape, proto=proto))


def _from_values(
    name: str, datatype: str, shape: tuple[int, ...], *, proto: tensor_pb2.TensorProto
) -> np.ndarray:
    field, wide_type = TF_VALUES[datatype].field, TF_VALUES[datatype].wide
    values = getattr(proto, field)
    count = element_count(shape)
    if len(values) > count or (not values and count):
        others = [f for f in _LISTS if f != field and getattr(proto, f)]
        hint = f" (values were given in {others[0]})" if others else ""
        raise InvalidInput(
            f"input '{name}': tensor_shape {list(shape)} needs {count} "
            f"{_dtype_name(proto.dtype)} values in tensor_content or {field}, "
            f"got {len(values)}{hint}"
        )
    if datatype == "BYTES":
        wide = np.empty(len(values), dtype=np.object_)
        wide[:] = list(values)
    else:
        wide = np.array(values, dtype=wide_type)
    if len(wide) < count:  # TensorFlow pads a short list with its last value
        wide = np.concatenate([wide, np.repeat(wide[-1:], count - len(wide))])
    if datatype == "FP16":
        _check_range(name, field, wide=wide, dtype=np.dtype(np.uint16))
        return wide.astype(np.uint16).view(np.float16).reshape(shape)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and dtype != wide.dtype:
        _check_range(name, field, wide=wide, dtype=dtype)
    return wide.astype(dtype, copy=False).reshape(shape)


def _check_range(name: str, field: str, *, wide: np.ndarray, dtype: np.dtype[Any]) -> None:
    info = np.iinfo(dtype)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise InvalidInput(f"input '{name}': a value in {field} is out of the range of {dtype}")


def encode_output(tensor: Tensor, proto: tensor_pb2.TensorProto) -> None:
    """Fill ``proto`` with ``tensor``, as TF Serving answers: numbers in
    ``tensor_content``, strings in ``string_val``."""
    proto.dtype = TF_DATATYPES[tensor.datatype]
    _set_shape(proto.tensor_shape, tensor.data.shape)
    if tensor.datatype == "BYTES":
        proto.string_val.extend(tensor.data.ravel().tolist())
    else:
        proto.tensor_content = encode_tensor(tensor.data, tensor.datatype)


def _set_shape(proto: tensor_shape_pb2.TensorShapeProto, shape: tuple[int, ...]) -> None:
    proto.SetInParent()  # a scalar's shape is present, with no dims
    for size in shape:
        proto.dim.add(size=size)


def _dtype_name(number: int) -> str:
    try:
        return str(types_pb2.DataType.Name(number))
    except ValueError:
        return str(number)


# -- model_spec ---------------------------------------------------------------------------


def _model_name(spec: model_pb2.ModelSpec, context: Context) -> str:
    name = routed_model(spec.name, context)
    if not name:
        raise InvalidInput("model_spec.name is empty; name the model to call")
    return name


def _version(service: InferenceService, name: str, spec: model_pb2.ModelSpec) -> str:
    """The version ``spec`` asks for: its number, its label's version, or "" (latest)."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return str(spec.version.value)
    if choice == "version_label":
        return service.version_for_label(name, spec.version_label)
    return ""


def _answered_spec(name: str, version: str, signature: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    number = natural(version)
    if number is not None:
        spec.version.value = number
    return spec


def _signature_def(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> Any:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signature = signatures.signature_def[DEFAULT_SIGNATURE]
    signature.method_name = PREDICT_METHOD
    for specs, infos in ((inputs, signature.inputs), (outputs, signature.outputs)):
        for spec in specs:
            info = infos[spec.name]
            info.name = spec.name
            info.dtype = TF_DATATYPES[spec.datatype]
            _set_shape(info.tensor_shape, spec.shape)
    return signatures


# -- the services -------------------------------------------------------------------------


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @maps_errors
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: Context
    ) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        name = _model_name(spec, context)
        version = _version(self.service, name, spec)
        runtime = self.service.get_version(name, version).spec.runtime
        parameters = signature_parameters(spec.signature_name, name, runtime)
        if not request.inputs:
            raise InvalidInput("PredictRequest has no inputs")
        limit = self.service.max_tensor_elements
        inputs = tuple(decode_input(k, v, limit) for k, v in request.inputs.items())
        outputs = tuple(RequestedOutput(n) for n in request.output_filter)
        answer = await self.service.infer(
            InferenceRequest(name, inputs, version, parameters=parameters, outputs=outputs)
        )
        signature = parameters.get(SIGNATURE_PARAMETER, DEFAULT_SIGNATURE)
        response = predict_pb2.PredictResponse(
            model_spec=_answered_spec(name, answer.model_version, signature)
        )
        for tensor in answer.outputs:
            encode_output(tensor, response.outputs[tensor.name])
        return response

    @maps_errors
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidInput(
                f"GetModelMetadataRequest must specify at least one metadata_field; "
                f"ask for '{SIGNATURE_DEF}'"
            )
        for field in fields:
            if field != SIGNATURE_DEF:
                raise InvalidInput(
                    f"Metadata field {field} is not supported; the one there is is "
                    f"'{SIGNATURE_DEF}'"
                )
        name = _model_name(request.model_spec, context)
        version = _version(self.service, name, request.model_spec)
        served = str(self.service.get_version(name, version).version)
        meta = self.service.metadata(name, served)
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=_answered_spec(name, served)
        )
        response.metadata[SIGNATURE_DEF].Pack(_signature_def(meta.inputs, meta.outputs))
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @maps_errors
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: Context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        name = _model_name(request.model_spec, context)
        version = _version(self.service, name, request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        for row in self.service.model_status(name, version):
            doc = version_status(row.state, row.reason, row.version or version)
            response.model_version_status.add(
                version=natural(doc["version"]) or 0,
                state=doc["state"],
                status=status_pb2.StatusProto(
                    error_code=doc["status"]["error_code"],
                    error_message=doc["status"]["error_message"],
                ),
            )
        return response


def _unsupported(message: str) -> grpc.RpcMethodHandler:
    """A handler that answers UNIMPLEMENTED without parsing the request."""

    async def answer(request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        raise AssertionError("unreachable: abort raises")

    handler: Callable[[bytes, Context], Coroutine[Any, Any, bytes]] = answer
    return grpc.unary_unary_rpc_method_handler(handler)


def add_tfserving_services(service: InferenceService, server: Any) -> None:
    """Serve TF Serving's PredictionService and ModelService on ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(service), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), server)
    for name in (PREDICTION_SERVICE, MODEL_SERVICE):
        handlers = {m: _unsupported(text) for (s, m), text in UNSUPPORTED.items() if s == name}
        server.add_registered_method_handlers(name, handlers)
