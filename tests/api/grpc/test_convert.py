"""Proto <-> tensors in process: typed contents, raw bytes, parameters, and bad input;
the model configuration message; the trailers of errors that ask for a retry."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.api.grpc.convert import decode_request, encode_response, model_config, parameters
from modelport.api.grpc.errors import error_trailers
from modelport.api.http.errors import error_parts
from modelport.api.http.v2 import config_json
from modelport.codecs.v2_binary import encode_tensor
from modelport.core.runtime import Signature
from modelport.core.triton_config import triton_config
from modelport.errors import InvalidInput, ModelportError, Overloaded, TooManyRequests
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import model_config_pb2 as config_pb
from modelport.spec import parse_spec
from modelport.tensors import InferenceResponse, Tensor

pytestmark = pytest.mark.timeout(10)


def request_with(
    datatype: str, shape: list[int], field: str, values: list[object]
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="ignored")
    item = message.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    getattr(item.contents, field).extend(values)
    return message


def test_typed_contents_are_narrowed_to_the_datatype() -> None:
    decoded = decode_request(request_with("INT8", [2, 2], "int_contents", [-128, 0, 1, 127]), "m")
    tensor = decoded.request.inputs[0]
    assert decoded.request.model_name == "m"
    assert decoded.typed_output
    assert tensor.data.dtype == np.int8
    np.testing.assert_array_equal(tensor.data, [[-128, 0], [1, 127]])


def test_typed_value_out_of_range() -> None:
    with pytest.raises(InvalidInput, match="out of the range of UINT8"):
        decode_request(request_with("UINT8", [1], "uint_contents", [256]), "m")


def test_typed_count_mismatch_names_the_field() -> None:
    with pytest.raises(InvalidInput, match=r"needs 3 values in contents.fp32_contents, got 2"):
        decode_request(request_with("FP32", [3], "fp32_contents", [1.0, 2.0]), "m")


def test_fp16_has_no_typed_list() -> None:
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        decode_request(request_with("FP16", [1], "fp32_contents", [1.0]), "m")


def test_raw_and_typed_cannot_mix() -> None:
    message = request_with("FP32", [1], "fp32_contents", [1.0])
    message.raw_input_contents.append(encode_tensor(np.ones(1, np.float32), "FP32"))
    with pytest.raises(InvalidInput, match="both contents and raw_input_contents"):
        decode_request(message, "m")


def test_raw_entries_must_match_inputs() -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(name="a", datatype="FP32", shape=[1])
    message.inputs.add(name="b", datatype="FP32", shape=[1])
    message.raw_input_contents.append(b"\0\0\0\0")
    with pytest.raises(InvalidInput, match="2 inputs"):
        decode_request(message, "m")


def test_bad_datatype_and_shape() -> None:
    with pytest.raises(InvalidInput, match="FP8"):
        decode_request(request_with("FP8", [1], "fp32_contents", [1.0]), "m")
    with pytest.raises(InvalidInput, match="negative"):
        decode_request(request_with("FP32", [-1], "fp32_contents", [1.0]), "m")
    with pytest.raises(InvalidInput, match="no inputs"):
        decode_request(pb.ModelInferRequest(), "m")


def test_parameters_of_every_kind() -> None:
    message = request_with("BOOL", [1], "bool_contents", [True])
    message.parameters["b"].bool_param = True
    message.parameters["i"].int64_param = -3
    message.parameters["u"].uint64_param = 2**64 - 1
    message.parameters["d"].double_param = 0.5
    message.parameters["s"].string_param = "x"
    message.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 2
    decoded = decode_request(message, "m").request
    assert decoded.parameters == {"b": True, "i": -3, "u": 2**64 - 1, "d": 0.5, "s": "x"}
    assert decoded.outputs[0].parameters == {"classification": 2}
    assert parameters(message.inputs[0].parameters) == {}


def test_response_is_typed_only_when_every_output_can_be() -> None:
    ints = Tensor("a", "INT16", np.array([[1, -2]], dtype=np.int16))
    half = Tensor("b", "FP16", np.array([0.5], dtype=np.float16))
    words = Tensor("c", "BYTES", np.array([b"x", b""], dtype=np.object_))
    typed = encode_response(InferenceResponse("m", "1", (ints, words), "id-1", {"k": 1}), True)
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.int_contents) == [1, -2]
    assert list(typed.outputs[0].shape) == [1, 2]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"x", b""]
    assert typed.parameters["k"].int64_param == 1
    assert typed.id == "id-1"

    mixed = encode_response(InferenceResponse("m", "1", (ints, half)), True)
    assert not mixed.outputs[0].HasField("contents")
    assert mixed.raw_output_contents == [ints.data.tobytes(), half.data.tobytes()]


def test_the_model_config_message_encodes_the_one_config_value() -> None:
    spec = parse_spec(
        "m",
        "runtime: onnx\nmax_batch_size: 8\nbatching: {preferred_batch_sizes: [4]}\n"
        "instances: {count: 2, device: gpu, gpus: [1]}\nversion_policy: {all: true}\n"
        "inputs: [{name: x, datatype: BYTES, shape: [3]}]\n"
        "outputs: [{name: y, datatype: FP32, shape: [2]}]\nparameters: {k: [1]}\n",
        "model.yaml",
    )
    config = triton_config(spec, Signature(spec.inputs, spec.outputs))
    message = model_config(config)
    assert (message.name, message.platform, message.backend) == ("m", "onnxruntime_onnx", "onnx")
    assert message.input[0].data_type == config_pb.TYPE_STRING
    assert list(message.input[0].dims) == [3] and message.output[0].data_type == config_pb.TYPE_FP32
    group = message.instance_group[0]
    assert (group.count, group.kind, list(group.gpus)) == (2, group.KIND_GPU, [1])
    assert message.version_policy.HasField("all")
    assert list(message.dynamic_batching.preferred_batch_size) == [4]
    assert message.parameters["k"].string_value == "[1]"
    # HTTP encodes the same value (api/http/v2.py), field for field.
    http = config_json(config)
    assert http["input"] == [{"name": "x", "dims": [3], "data_type": "TYPE_STRING"}]
    assert http["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert http["dynamic_batching"]["preferred_batch_size"] == [4]


@pytest.mark.parametrize(
    ("error", "trailers"),
    [
        (Overloaded("busy", retry_after=0.2), (("retry-after", "1"),)),
        (TooManyRequests("limit", retry_after=2.6), (("retry-after", "3"),)),
        (InvalidInput("bad"), ()),
    ],
)
def test_retry_later_errors_carry_a_retry_after_trailer(
    error: ModelportError, trailers: tuple[tuple[str, str], ...]
) -> None:
    assert error_trailers(error) == trailers
    _, _, headers = error_parts(error)
    assert [(k.decode(), v.decode()) for k, v in headers if k == b"retry-after"] == list(trailers)
