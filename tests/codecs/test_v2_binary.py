"""Triton's binary tensor data: raw little-endian bytes; BYTES elements length-prefixed."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.errors import InvalidInput
from modelport.tensors import DATATYPES, element_count

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], np.uint64),
    "INT8": np.array([[-128, 0, 127], [7, -8, 9]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [7, -8, 9]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [np.inf, 1e-3, -0.0]], np.float16),
    "FP32": np.array([[0.1, -1.5, 3.4e38], [np.inf, 1e-30, -0.0]], np.float32),
    "FP64": np.array([[0.1, -1.5, 1.7e308], [np.inf, 1e-300, -0.0]], np.float64),
    "BYTES": np.array([[b"", b"a", "é".encode()], [b"\x00\xff", b"xyz" * 50, b"z"]], object),
}


def test_samples_cover_every_datatype() -> None:
    assert set(SAMPLES) == set(DATATYPES)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    raw = encode_tensor(array, datatype)
    back = decode_tensor("x", datatype, array.shape, raw)
    assert back.shape == array.shape
    assert back.dtype == DATATYPES[datatype]
    assert back.dtype.isnative
    assert back.tolist() == array.tolist()


def test_numbers_are_little_endian() -> None:
    assert encode_tensor(np.array([1, 256], np.uint16), "UINT16") == b"\x01\x00\x00\x01"
    assert encode_tensor(np.array([1.0], np.float32), "FP32") == struct.pack("<f", 1.0)


def test_big_endian_input_is_written_little_endian() -> None:
    array = np.array([1, 2], dtype=">i4")
    assert encode_tensor(array, "INT32") == struct.pack("<2i", 1, 2)


def test_bool_is_one_byte_an_element() -> None:
    assert encode_tensor(np.array([True, False, True]), "BOOL") == b"\x01\x00\x01"


def test_bytes_are_length_prefixed() -> None:
    raw = encode_tensor(np.array([b"ab", b""], object), "BYTES")
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


def test_str_elements_are_utf8() -> None:
    raw = encode_tensor(np.array(["é"], object), "BYTES")
    assert raw == b"\x02\x00\x00\x00" + "é".encode()


def test_non_contiguous_arrays_are_written_row_major() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T
    raw = encode_tensor(array, "INT32")
    assert decode_tensor("x", "INT32", (3, 2), raw).tolist() == array.tolist()


def test_too_few_bytes() -> None:
    with pytest.raises(InvalidInput, match=r"shape \[2, 2\] of FP32 needs 16 bytes .* got 12"):
        decode_tensor("x", "FP32", (2, 2), b"\x00" * 12)


def test_too_many_bytes() -> None:
    with pytest.raises(InvalidInput, match="needs 4 bytes of binary data, got 5"):
        decode_tensor("x", "INT32", (1,), b"\x00" * 5)


def test_bytes_element_count_must_match_shape() -> None:
    raw = encode_tensor(np.array([b"a", b"b", b"c"], object), "BYTES")
    with pytest.raises(InvalidInput, match="needs 2 BYTES elements, got 3"):
        decode_tensor("x", "BYTES", (2,), raw)


def test_bytes_element_past_the_end() -> None:
    with pytest.raises(InvalidInput, match="element of 10 bytes runs past the end"):
        decode_tensor("x", "BYTES", (1,), b"\x0a\x00\x00\x00abc")


def test_bytes_data_ending_inside_a_length() -> None:
    with pytest.raises(InvalidInput, match="ends inside an element's length"):
        decode_tensor("x", "BYTES", (2,), b"\x01\x00\x00\x00a\x01\x00")


def test_empty_tensors() -> None:
    assert decode_tensor("x", "FP32", (0, 3), b"").shape == (0, 3)
    assert decode_tensor("x", "BYTES", (0,), b"").shape == (0,)
    assert element_count(()) == 1 and element_count((2, 0, 3)) == 0
