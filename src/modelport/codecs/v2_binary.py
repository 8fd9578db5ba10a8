"""Triton's binary tensor data: raw little-endian, row-major, unpadded bytes.

BOOL is one byte an element; a BYTES element is a 4-byte little-endian length then its
bytes. The same layout is used by gRPC's ``raw_input_contents``.
"""

from __future__ import annotations

import struct

import numpy as np

from modelport.errors import InvalidInput
from modelport.tensors import element_count, numpy_dtype

_LENGTH = struct.Struct("<I")


def decode_tensor(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """Raw bytes to an array of ``shape``; InvalidInput says what did not add up."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes(name, shape, count, raw)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected} bytes of "
            f"binary data, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _decode_bytes(name: str, shape: tuple[int, ...], count: int, raw: bytes) -> np.ndarray:
    items: list[bytes] = []
    view, offset, end = memoryview(raw), 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput(f"input '{name}': BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + size > end:
            raise InvalidInput(f"input '{name}': BYTES element of {size} bytes runs past the end")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} BYTES elements, got {len(items)}"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def encode_tensor(array: np.ndarray, datatype: str) -> bytes:
    """An array as Triton binary data (little-endian, row-major)."""
    if datatype == "BYTES":
        parts = []
        for item in array.flat:
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()
