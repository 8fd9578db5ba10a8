"""One message of the online path: a JSON header and raw tensors, in one byte string.

Layout: 4-byte little-endian header length, the header (orjson), then each tensor's raw
bytes in the order of ``header["tensors"]`` (Triton's binary layout: little-endian,
row-major; BYTES elements length-prefixed). No pickle: a message read from Redis is
parsed, never executed.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.errors import InvalidInput
from modelport.tensors import datatype_of

_LENGTH = struct.Struct("<I")


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    tensors, blobs = [], []
    for name, array in arrays.items():
        datatype = datatype_of(array)
        raw = encode_tensor(array, datatype)
        shape = list(array.shape)
        tensors.append({"name": name, "datatype": datatype, "shape": shape, "size": len(raw)})
        blobs.append(raw)
    head = orjson.dumps({**header, "tensors": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([_LENGTH.pack(len(head)), head, *blobs])


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if len(message) < 4:
        raise InvalidInput("cluster message too short")
    (size,) = _LENGTH.unpack_from(message, 0)
    header = orjson.loads(message[4 : 4 + size])
    offset = 4 + size
    arrays: dict[str, np.ndarray] = {}
    for tensor in header.pop("tensors", []):
        end = offset + int(tensor["size"])
        arrays[tensor["name"]] = decode_tensor(
            tensor["name"], tensor["datatype"], tuple(tensor["shape"]), message[offset:end]
        )
        offset = end
    return header, arrays
