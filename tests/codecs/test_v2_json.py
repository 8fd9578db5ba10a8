"""KServe v2 JSON bodies, with and without Triton's binary data extension."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from modelport.codecs.v2_binary import encode_tensor
from modelport.codecs.v2_json import DecodedRequest, decode_request, encode_response
from modelport.errors import InvalidInput
from modelport.tensors import DATATYPES, InferenceResponse, Tensor

# Values JSON can carry exactly, per datatype: (json data, expected array).
JSON_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 2, 65535],
    "UINT32": [0, 1, 2, 2**32 - 1],
    "UINT64": [0, 1, 2, 2**64 - 1],
    "INT8": [-128, 0, 1, 127],
    "INT16": [-(2**15), 0, 1, 2**15 - 1],
    "INT32": [-(2**31), 0, 1, 2**31 - 1],
    "INT64": [-(2**63), 0, 1, 2**63 - 1],
    "FP16": [0.5, -1.25, 2.0, 1024.0],
    "FP32": [0.5, -1.25, 2.0, 3.0],
    "FP64": [0.1, -1.5, 1e300, 3.0],
    "BYTES": ["", "a", "é", "long" * 10],
}


def _decode(doc: Any, binary: bytes = b"") -> DecodedRequest:
    head = orjson.dumps(doc)
    return decode_request(head + binary, len(head) if binary else None, "m", "1")


def _input(datatype: str, shape: list[int], data: Any, name: str = "x") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _error(doc: Any, binary: bytes = b"") -> str:
    with pytest.raises(InvalidInput) as info:
        _decode(doc, binary)
    return info.value.message


def _expected(datatype: str) -> np.ndarray:
    values = JSON_VALUES[datatype]
    if datatype == "BYTES":
        return np.array([v.encode() for v in values], object).reshape(2, 2)
    return np.array(values, DATATYPES[datatype]).reshape(2, 2)


def _encode(*tensors: Tensor, binary: bool = False) -> tuple[dict[str, Any], bytes]:
    body, json_length = encode_response(InferenceResponse("m", "1", tensors, "req-1"), binary)
    if json_length is None:
        return orjson.loads(body), b""
    return orjson.loads(body[:json_length]), body[json_length:]


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_request_every_datatype(datatype: str, nested: bool) -> None:
    data = JSON_VALUES[datatype]
    if nested:
        data = [data[:2], data[2:]]
    decoded = _decode({"inputs": [_input(datatype, [2, 2], data)]})
    (tensor,) = decoded.request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 2))
    assert tensor.data.dtype == DATATYPES[datatype]
    assert tensor.data.tolist() == _expected(datatype).tolist()


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_request_every_datatype(datatype: str) -> None:
    array = _expected(datatype)
    raw = encode_tensor(array, datatype)
    item = {"name": "x", "datatype": datatype, "shape": [2, 2]}
    item["parameters"] = {"binary_data_size": len(raw)}
    (tensor,) = _decode({"inputs": [item]}, raw).request.inputs
    assert tensor.data.dtype == DATATYPES[datatype]
    assert tensor.data.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_response_round_trip(datatype: str) -> None:
    array = _expected(datatype)
    doc, rest = _encode(Tensor("y", datatype, array))
    assert rest == b""
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "req-1"
    (out,) = doc["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", datatype, [2, 2])
    assert "parameters" not in out
    # The response's data decodes back to the same tensor as a request would.
    back = _decode({"inputs": [_input(datatype, out["shape"], out["data"])]}).request.inputs[0]
    assert back.data.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_response_round_trip(datatype: str) -> None:
    array = _expected(datatype)
    doc, rest = _encode(Tensor("y", datatype, array), binary=True)
    (out,) = doc["outputs"]
    assert "data" not in out
    assert out["parameters"] == {"binary_data_size": len(rest)}
    item = {k: out[k] for k in ("name", "datatype", "shape", "parameters")}
    back = _decode({"inputs": [item]}, rest).request.inputs[0]
    assert back.data.dtype == DATATYPES[datatype]
    assert back.data.tolist() == array.tolist()


def test_fp16_json_output_is_numbers() -> None:
    doc, _ = _encode(Tensor("y", "FP16", np.array([0.5, -2.0], np.float16)))
    assert doc["outputs"][0]["data"] == [0.5, -2.0]


def test_per_output_binary_choice() -> None:
    a = Tensor("a", "INT32", np.array([1, 2], np.int32), {"binary_data": True})
    b = Tensor("b", "INT32", np.array([3], np.int32), {"binary_data": False})
    c = Tensor("c", "BYTES", np.array([b"hi"], object))
    doc, rest = _encode(a, b, c, binary=True)
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["b"]["data"] == [3] and "parameters" not in outs["b"]
    assert outs["a"]["parameters"] == {"binary_data_size": 8}
    assert outs["c"]["parameters"] == {"binary_data_size": 6}
    assert rest == encode_tensor(a.data, "INT32") + b"\x02\x00\x00\x00hi"


def test_several_binary_inputs_share_the_tail() -> None:
    a, b = np.array([1.5, 2.5], np.float32), np.array([b"q", b"rs"], object)
    raw_a, raw_b = encode_tensor(a, "FP32"), encode_tensor(b, "BYTES")
    doc = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2],
             "parameters": {"binary_data_size": len(raw_a)}},
            _input("INT8", [1], [5], name="j"),
            {"name": "b", "datatype": "BYTES", "shape": [2],
             "parameters": {"binary_data_size": len(raw_b)}},
        ]
    }  # fmt: skip
    inputs = _decode(doc, raw_a + raw_b).request.inputs
    assert [t.name for t in inputs] == ["a", "j", "b"]
    assert inputs[0].data.tolist() == [1.5, 2.5]
    assert inputs[1].data.tolist() == [5]
    assert inputs[2].data.tolist() == [b"q", b"rs"]


def test_request_fields() -> None:
    decoded = _decode(
        {
            "id": 42,
            "inputs": [_input("FP32", [1], [1.0])],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
            "parameters": {"binary_data_output": True, "threshold": 0.5},
        }
    )
    request = decoded.request
    assert (request.model_name, request.model_version, request.id) == ("m", "1", "42")
    assert decoded.binary_output is True
    # Protocol parameters steer the encoding; only the rest reach the model.
    assert request.parameters == {"threshold": 0.5}
    assert [(o.name, o.parameters) for o in request.outputs] == [
        ("y", {"binary_data": True}),
        ("z", {}),
    ]


def test_wrong_element_count() -> None:
    message = _error({"inputs": [_input("FP32", [2, 2], [1.0, 2.0, 3.0])]})
    assert "input 'x': shape [2, 2] needs 4 values, got 3" in message


def test_ragged_nested_data() -> None:
    message = _error({"inputs": [_input("FP32", [2, 2], [[1.0, 2.0], [3.0]])]})
    assert "flat or nested list of FP32" in message


def test_binary_data_size_past_the_end() -> None:
    item = {"name": "x", "datatype": "FP32", "shape": [4]}
    item["parameters"] = {"binary_data_size": 16}
    message = _error({"inputs": [item]}, b"\x00" * 8)
    assert "binary_data_size 16 runs past the 8 bytes" in message


def test_binary_data_size_not_matching_the_shape() -> None:
    item = {"name": "x", "datatype": "FP32", "shape": [4]}
    item["parameters"] = {"binary_data_size": 8}
    message = _error({"inputs": [item]}, b"\x00" * 8)
    assert "needs 16 bytes of binary data, got 8" in message


def test_leftover_binary_bytes() -> None:
    item = {"name": "x", "datatype": "INT32", "shape": [1]}
    item["parameters"] = {"binary_data_size": 4}
    message = _error({"inputs": [item]}, b"\x00" * 7)
    assert "3 bytes of binary data follow the JSON but no input claims them" in message


def test_header_length_longer_than_the_body() -> None:
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length is 99"):
        decode_request(b"{}", 99, "m", "")


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b"\xff\xfe"], ids=["broken", "empty", "not-utf8"]
)
def test_bad_json(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        decode_request(body, None, "m", "")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ([1, 2], "must be a JSON object"),
        ({"inputs": []}, "non-empty 'inputs' list"),
        ({"inputs": [5]}, "each input must be an object"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, "has no 'name'"),
        ({"inputs": [_input("FLOAT", [1], [1])]}, "datatype 'FLOAT' is not one of"),
        ({"inputs": [_input("FP32", [-1], [1])]}, "list of non-negative integers"),
        ({"inputs": [_input("FP32", "1", [1])]}, "list of non-negative integers"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "neither 'data'"),
        ({"inputs": [_input("FP32", [1], [1])], "parameters": [1]}, "'parameters' must be"),
        ({"inputs": [_input("FP32", [1], [1])], "outputs": [{}]}, "with a 'name'"),
    ],
)
def test_malformed_requests(doc: Any, expected: str) -> None:
    assert expected in _error(doc)


@pytest.mark.parametrize("datatype", ["FP32", "INT32", "UINT8", "BOOL"])
def test_strings_for_numbers(datatype: str) -> None:
    message = _error({"inputs": [_input(datatype, [2], ["1", "2"])]})
    assert f"list of {datatype} values" in message


@pytest.mark.parametrize("datatype", ["INT8", "INT64", "UINT32", "BOOL"])
def test_floats_for_integers(datatype: str) -> None:
    message = _error({"inputs": [_input(datatype, [2], [1.0, 2.5])]})
    assert f"list of {datatype} values" in message


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("UINT8", [0, 256]),
        ("UINT8", [-1, 0]),
        ("INT8", [-129, 0]),
        ("INT16", [2**15, 0]),
        ("UINT32", [2**32, 0]),
        ("INT32", [-(2**31) - 1, 0]),
        ("INT64", [2**63, 0]),
        ("UINT64", [-1, 2**64 - 1]),
    ],
)
def test_out_of_range_integers(datatype: str, values: list[int]) -> None:
    message = _error({"inputs": [_input(datatype, [2], values)]})
    assert f"list of {datatype} values" in message


def test_integers_for_floats_are_accepted() -> None:
    (tensor,) = _decode({"inputs": [_input("FP64", [2], [1, 2])]}).request.inputs
    assert tensor.data.dtype == np.float64 and tensor.data.tolist() == [1.0, 2.0]


def test_bool() -> None:
    (tensor,) = _decode({"inputs": [_input("BOOL", [3], [True, False, 1])]}).request.inputs
    assert tensor.data.dtype == np.bool_ and tensor.data.tolist() == [True, False, True]


def test_bytes_refuse_objects() -> None:
    assert "list of BYTES values" in _error({"inputs": [_input("BYTES", [1], [{"a": 1}])]})


def test_empty_tensor() -> None:
    (tensor,) = _decode({"inputs": [_input("FP32", [0, 3], [])]}).request.inputs
    assert tensor.data.shape == (0, 3) and tensor.data.dtype == np.float32
