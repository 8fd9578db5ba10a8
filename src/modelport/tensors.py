"""Tensors and the messages that carry them: the one vocabulary of every protocol.

Numbers stay numpy end to end. BYTES tensors are numpy object arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.errors import InvalidInput

# v2 datatype name -> numpy dtype. BYTES is an object array of bytes.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_BY_DTYPE: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype name, or InvalidInput naming the valid ones."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (str and bytes arrays are BYTES)."""
    dtype = array.dtype
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no v2 datatype") from None


_NUMBER_KINDS = frozenset("biuf")


def cast_numbers(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Numbers parsed from JSON to ``dtype``; ValueError for strings, floats given for
    integers, and values out of the type's range (no silent wrap-around, no inf)."""
    kind, want = array.dtype.kind, dtype.kind
    if array.size == 0:
        return array.astype(dtype)
    if (
        kind not in _NUMBER_KINDS
        or (want == "b" and kind not in "bi")
        or (want in "iu" and kind == "f")
    ):
        raise ValueError("wrong kind")
    if want in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ValueError("out of range")
    # A finite number past the float type's range (70000 as FP16) is refused, not inf.
    with np.errstate(over="raise"):
        try:
            return array.astype(dtype, copy=False)
        except FloatingPointError:
            raise ValueError("out of range") from None


def as_bytes_array(array: np.ndarray) -> np.ndarray:
    """A BYTES tensor as an object array of ``bytes`` (str items are UTF-8 encoded)."""
    if array.dtype == np.object_ and all(isinstance(x, bytes) for x in array.flat):
        return array
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(array.flat):
        flat[i] = item.encode() if isinstance(item, str) else bytes(item)
    return out


def element_count(shape: tuple[int, ...]) -> int:
    """Elements of an array of ``shape``."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def checked_count(name: str, shape: tuple[int, ...], limit: int) -> int:
    """The elements of ``shape``; InvalidInput when there are more than ``limit`` (the
    ``max_tensor_elements`` setting; 0: no limit). Decoders call it before they allocate,
    since a shape can claim far more than the message carries."""
    count = element_count(shape)
    if limit and count > limit:
        raise too_many_elements(name, shape, count, limit)
    # [0, 2**40, 2**40] has no elements, but no array of that shape can be made either:
    # the dimensions other than 0 must fit under the limit too.
    if limit and element_count(tuple(max(d, 1) for d in shape)) > limit:
        raise InvalidInput(
            f"input '{name}' has shape {list(shape)}, whose dimensions other than 0 "
            f"multiply to more than the limit of {limit} (max_tensor_elements)"
        )
    return count


def too_many_elements(name: str, shape: tuple[int, ...], count: int, limit: int) -> InvalidInput:
    return InvalidInput(
        f"input '{name}' has {count} elements (shape {list(shape)}), over the limit of "
        f"{limit} (max_tensor_elements); send fewer rows per request, or the operator can "
        "raise the limit"
    )


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named array. ``datatype`` is the v2 name; ``data`` a numpy array of that type."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for, with its per-output parameters (binary_data...)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    model_name: str
    inputs: tuple[Tensor, ...]
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[RequestedOutput, ...] = ()
    # When the client stops waiting (``time.monotonic_ns()``; 0: never), from a transport
    # deadline (gRPC's grpc-timeout, HTTP's Request-Timeout); the v2 parameter
    # ``timeout`` (microseconds) is read by the core and shortens it.
    deadline_ns: int = 0
    # The request's span when tracing is on (core/tracing.py; opaque here), else None.
    trace: object | None = None


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
