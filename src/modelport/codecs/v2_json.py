"""KServe v2 JSON requests and responses, with Triton's binary data extension.

A request body is a JSON document, optionally followed by binary tensor chunks; the
``Inference-Header-Content-Length`` header gives the JSON part's length when chunks
follow. ``decode_request`` and ``encode_response`` are the hot path of the REST API,
so they use orjson and numpy directly, with no schema layer in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelport.codecs.regions import (
    REGION,
    Regions,
    no_regions,
    placed_in_region,
    region_slice,
)
from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.errors import InvalidInput
from modelport.tensors import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    cast_numbers,
    checked_count,
    element_count,
)

# Request-level parameters that steer the encoding, not the model.
PROTOCOL_PARAMETERS = frozenset({"binary_data_output"})
_JSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    request: InferenceRequest
    binary_output: bool


def _fail(message: str) -> InvalidInput:
    return InvalidInput(message)


def decode_request(
    body: bytes,
    json_length: int | None,
    model_name: str,
    model_version: str,
    max_elements: int = 0,
    *,
    regions: Regions | None = None,
) -> DecodedRequest:
    """Parse a v2 infer body (JSON, or JSON + binary chunks); an input whose shape has
    more than ``max_elements`` elements is refused before its data is read (0: any).
    An input naming a shared-memory region is read from ``regions``."""
    if json_length is not None:
        if json_length < 0 or json_length > len(body):
            raise _fail(
                f"Inference-Header-Content-Length is {json_length}, but the body has only "
                f"{len(body)} bytes"
            )
        head, binary = body[:json_length], memoryview(body)[json_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _fail("request needs a non-empty 'inputs' list of {name, shape, datatype, data}")
    offset = 0
    inputs: list[Tensor] = []
    for item in raw_inputs:
        tensor, used = _decode_input(item, binary, offset, max_elements, regions)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise _fail(
            f"{len(binary) - offset} bytes of binary data follow the JSON but no input "
            "claims them (binary_data_size)"
        )
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail("'parameters' must be a JSON object")
    binary_output = bool(parameters.get("binary_data_output", False))
    model_params = {k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS}
    outputs = tuple(_decode_output(o) for o in doc.get("outputs") or ())
    request_id = doc.get("id", "")
    return DecodedRequest(
        InferenceRequest(
            model_name,
            tuple(inputs),
            model_version,
            request_id if isinstance(request_id, str) else str(request_id),
            model_params,
            outputs,
        ),
        binary_output,
    )


def _decode_input(
    item: Any, binary: memoryview, offset: int, max_elements: int, regions: Regions | None
) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise _fail("each input must be an object {name, shape, datatype, data}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("an input has no 'name'")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise _fail(f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _fail(f"input '{name}': 'shape' must be a list of non-negative integers")
    dims = tuple(shape)
    checked_count(name, dims, max_elements)
    params = item.get("parameters") or {}
    where = region_slice(params, name) if isinstance(params, dict) else None
    if where is not None:
        if regions is None:
            raise no_regions(name)
        return Tensor(name, datatype, decode_tensor(name, datatype, dims, regions.read(where))), 0
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise _fail(
                f"input '{name}': binary_data_size {size} runs past the {len(binary)} bytes "
                "of binary data after the JSON (check Inference-Header-Content-Length)"
            )
        raw = bytes(binary[offset : offset + size])
        data = decode_tensor(name, datatype, dims, raw)
        return Tensor(name, datatype, data), size
    if "data" not in item:
        raise _fail(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return Tensor(name, datatype, _json_array(name, datatype, dims, item["data"])), 0


def _json_array(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = element_count(shape)
    try:
        if datatype == "BYTES":
            flat = _flatten(data)
            array = np.empty(len(flat), dtype=np.object_)
            array[:] = [x.encode() if isinstance(x, str) else _bytes_item(name, x) for x in flat]
        else:
            array = np.asarray(data)
            if array.dtype.kind == "f" and datatype == "UINT64":
                array = _uint64(data)
            array = cast_numbers(array, DATATYPES[datatype])
    except (ValueError, TypeError, OverflowError):
        raise _fail(
            f"input '{name}': 'data' must be a flat or nested list of {datatype} values"
        ) from None
    if array.size != count:
        raise _fail(f"input '{name}': shape {list(shape)} needs {count} values, got {array.size}")
    return array.reshape(shape)


def _uint64(data: Any) -> np.ndarray:
    """numpy reads ints past INT64's range mixed with smaller ones as float64, losing
    precision; UINT64 data is read exactly instead."""
    flat = _flatten(data)
    if not all(type(x) is int for x in flat):
        raise ValueError("not integers")
    return np.array(flat, dtype=np.uint64)


def _bytes_item(name: str, item: Any) -> bytes:
    if isinstance(item, bool | int | float):
        return str(item).encode()
    raise ValueError(f"input '{name}': BYTES data must be strings")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _decode_output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise _fail("each requested output must be an object with a 'name'")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail(f"output '{item['name']}': 'parameters' must be an object")
    return RequestedOutput(item["name"], params)


def encode_response(
    response: InferenceResponse, binary_output: bool, *, regions: Regions | None = None
) -> tuple[bytes, int | None]:
    """The response body, and the JSON part's length when binary chunks follow. An output
    requested into a shared-memory region is written there and answered without data."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        params = dict(tensor.parameters)
        binary = params.pop("binary_data", binary_output)
        params.pop("classification", None)
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        where = region_slice(params, tensor.name) if REGION in params else None
        if where is not None:
            params = placed_in_region(tensor, where, regions)
        # FP16 cannot be written as JSON numbers by every client; Triton sends it binary.
        elif binary:
            raw = encode_tensor(tensor.data, tensor.datatype)
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    head = orjson.dumps(doc, option=_JSON_NUMPY)
    if not chunks:
        return head, None
    return b"".join((head, *chunks)), len(head)


def _json_data(tensor: Tensor) -> Any:
    array = tensor.data
    if tensor.datatype == "BYTES":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.flat
        ]
    if tensor.datatype == "FP16":
        return array.astype(np.float32).ravel()
    return np.ascontiguousarray(array).ravel()
