"""TensorFlow Serving's REST predict format: JSON rows or columns in, JSON out.

A request is ``{"signature_name"?, "instances": [...]}`` (the row format: one entry a
row, either the value of the model's one input or ``{input: value}``) or
``{"signature_name"?, "inputs": value | {input: value}}`` (the columnar format: whole
tensors). Answers are ``{"predictions": [...]}`` (one entry a row: a value for one
output, ``{output: value}`` for several) and ``{"outputs": value | {output: value}}``.
Binary (BYTES) values travel as ``{"b64": "..."}``: accepted on any BYTES input, and
written, as TF Serving does, for BYTES outputs whose name ends in ``_bytes``.

Decoding needs the model's signature, since a row has no names, shapes or datatypes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelport.errors import InvalidInput
from modelport.spec import TensorSpec
from modelport.tensors import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    Tensor,
    cast_numbers,
)

# The signature names a TF Serving client may send, besides the model's own name.
DEFAULT_SIGNATURE = "serving_default"
# A request's signature_name reaches a runtime that holds several signatures as this
# request parameter (runtimes/tensorflow.py runs the one it names, or refuses it).
SIGNATURE_PARAMETER = "signature_name"
SIGNATURE_RUNTIMES = frozenset({"tensorflow"})
_B64 = "b64"


# v2 datatype -> TF's DataType enum name.
TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}
# The registry's states as TF Serving's ManagedState names.
TF_STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNLOADING": "UNLOADING"}
# Reasons the registry gives a version that ended cleanly, not by failing.
_CLEAN_END = frozenset({"", "unloaded", "not loaded"})
PREDICT_METHOD = "tensorflow/serving/predict"


def version_status(state: str, reason: str, version: str) -> dict[str, Any]:
    """A model version's registry state as TF Serving reports it (REST and gRPC alike)."""
    failed = state == "UNAVAILABLE" and reason not in _CLEAN_END
    return {
        "version": version or "0",
        "state": TF_STATES.get(state, "END"),
        "status": {
            "error_code": "UNKNOWN" if failed else "OK",
            "error_message": reason if failed else "",
        },
    }


@dataclass(frozen=True, slots=True)
class DecodedPredict:
    """The request, and how to shape its answer: rows or columns, and whether one row
    of a model without a batch dimension was sent (its outputs go back as one row)."""

    request: InferenceRequest
    rows: bool
    one_unbatched_row: bool = False


def decode_predict(
    body: bytes,
    model_name: str,
    model_version: str,
    inputs: Sequence[TensorSpec],
    batched: bool,
    runtime: str = "",
) -> DecodedPredict:
    """Parse a ``:predict`` body against the model's ``inputs``. ``batched``: the model
    has a batch dimension (max_batch_size > 0), which rows map onto; ``runtime`` decides
    what its ``signature_name`` may be (:func:`signature_parameters`)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput('request body must be a JSON object with "instances" or "inputs"')
    parameters = signature_parameters(doc.get("signature_name"), model_name, runtime)
    if ("instances" in doc) == ("inputs" in doc):
        raise InvalidInput(
            'request body must have exactly one of "instances" (row format) or "inputs" '
            "(columnar format)"
        )
    specs = {t.name: t for t in inputs}
    if "inputs" in doc:
        values = _named(doc["inputs"], specs, "inputs")
        tensors = tuple(_tensor(specs[n], v) for n, v in values.items())
        request = InferenceRequest(model_name, tensors, model_version, parameters=parameters)
        return DecodedPredict(request, rows=False)
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list, one entry a row')
    rows = [_named(row, specs, "each instance") for row in instances]
    names = list(rows[0])
    if any(set(row) != set(names) for row in rows):
        raise InvalidInput("every instance must name the same inputs")
    tensors = tuple(_tensor(specs[n], [row[n] for row in rows]) for n in names)
    # Without a batch dimension, one row that is exactly one tensor of the model's rank
    # is that tensor; otherwise the rows are the tensor's first dimension, as TF does.
    single = (
        not batched
        and len(rows) == 1
        and all(t.data.ndim == len(specs[t.name].shape) + 1 for t in tensors)
    )
    if single:
        tensors = tuple(Tensor(t.name, t.datatype, t.data[0]) for t in tensors)
    request = InferenceRequest(model_name, tensors, model_version, parameters=parameters)
    return DecodedPredict(request, True, single)


def encode_predict(response: InferenceResponse, decoded: DecodedPredict) -> bytes:
    """The ``{"predictions": ...}`` or ``{"outputs": ...}`` answer to ``decoded``."""
    outputs = response.outputs
    if not decoded.rows:
        if len(outputs) == 1:
            return _dumps({"outputs": _value(outputs[0], outputs[0].data)})
        return _dumps({"outputs": {t.name: _value(t, t.data) for t in outputs}})
    if decoded.one_unbatched_row:
        rows = [{t.name: _value(t, t.data) for t in outputs}]
    else:
        count = {t.data.shape[0] if t.data.ndim else -1 for t in outputs}
        if len(count) != 1 or -1 in count:
            raise InvalidInput(
                "the model's outputs do not share a first (batch) dimension, so they "
                'cannot be written as rows; send the columnar "inputs" format instead'
            )
        n = count.pop()
        rows = [{t.name: _value(t, t.data[i]) for t in outputs} for i in range(n)]
    if len(outputs) == 1:
        name = outputs[0].name
        return _dumps({"predictions": [row[name] for row in rows]})
    return _dumps({"predictions": rows})


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def signature_parameters(name: Any, model_name: str, runtime: str) -> dict[str, Any]:
    """The request parameters a TF Serving ``signature_name`` becomes: for a runtime of
    :data:`SIGNATURE_RUNTIMES`, the name itself, which the runtime runs or refuses; for
    the others, whose one signature is ``serving_default``, none (or InvalidInput)."""
    if runtime in SIGNATURE_RUNTIMES and isinstance(name, str) and name not in ("", model_name):
        return {SIGNATURE_PARAMETER: name}
    check_signature(name, model_name)
    return {}


def check_signature(name: Any, model_name: str) -> None:
    if name in (None, "", DEFAULT_SIGNATURE, model_name):
        return
    raise InvalidInput(
        f"Serving signature name: {name!r} not found in signature def; model "
        f"'{model_name}' has one signature: '{DEFAULT_SIGNATURE}' (or omit signature_name)"
    )


def _named(value: Any, specs: dict[str, TensorSpec], where: str) -> dict[str, Any]:
    """``value`` as {input name: value}: an object naming inputs, or, for a model with
    one input, the bare value (a ``{"b64": ...}`` object is a value, not a name)."""
    is_b64 = isinstance(value, dict) and list(value) == [_B64] and _B64 not in specs
    if isinstance(value, dict) and not is_b64:
        unknown = [k for k in value if k not in specs]
        if unknown:
            raise InvalidInput(
                f"{where} names input(s) {unknown}, which the model does not have; its "
                f"inputs are {list(specs)}"
            )
        return value
    if len(specs) != 1:
        raise InvalidInput(
            f"the model has {len(specs)} inputs {list(specs)}, so {where} must be an "
            "object {input name: value}"
        )
    return {next(iter(specs)): value}


def _tensor(spec: TensorSpec, value: Any) -> Tensor:
    """A nested JSON list (or scalar) as a tensor of the input's declared datatype."""
    if spec.datatype == "BYTES":
        shape = _shape(value)
        flat: list[bytes] = []
        _flatten_bytes(spec.name, value, shape, 0, flat)
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = flat
        return Tensor(spec.name, "BYTES", array.reshape(shape))
    dtype = DATATYPES[spec.datatype]
    try:
        array = cast_numbers(np.asarray(value), dtype)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"input '{spec.name}' must be a number or a nested list of {spec.datatype} "
            "values, with every list at one depth of the same length"
        ) from None
    return Tensor(spec.name, spec.datatype, array)


def _shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten_bytes(name: str, value: Any, shape: list[int], depth: int, out: list[bytes]) -> None:
    if depth < len(shape):
        if not isinstance(value, list) or len(value) != shape[depth]:
            raise InvalidInput(f"input '{name}': every list at one depth must be as long")
        for item in value:
            _flatten_bytes(name, item, shape, depth + 1, out)
        return
    if isinstance(value, str):
        out.append(value.encode())
    elif isinstance(value, dict) and list(value) == [_B64] and isinstance(value[_B64], str):
        try:
            out.append(base64.b64decode(value[_B64], validate=True))
        except (binascii.Error, ValueError):
            raise InvalidInput(f"input '{name}': {value[_B64][:40]!r} is not base64") from None
    else:
        raise InvalidInput(
            f'input \'{name}\' is BYTES: give strings, or {{"b64": "..."}} for binary data'
        )


def _value(tensor: Tensor, data: Any) -> Any:
    """One output (or one row of it) as JSON-ready values."""
    if tensor.datatype != "BYTES":
        return data
    as_b64 = tensor.name.endswith("_bytes")
    if isinstance(data, np.ndarray):
        return [_value(tensor, item) for item in data] if data.ndim else _value(tensor, data[()])
    raw = data if isinstance(data, bytes) else str(data).encode()
    if not as_b64:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass  # JSON strings cannot carry it; TF Serving would write invalid JSON
    return {_B64: base64.b64encode(raw).decode()}
