"""The datatype table and the tensor helpers every protocol shares."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.errors import ErrorKind, InvalidInput
from modelport.tensors import DATATYPES, Tensor, as_bytes_array, datatype_of, numpy_dtype


def test_table_has_every_v2_datatype() -> None:
    assert list(DATATYPES) == [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_datatype_round_trips_through_numpy(datatype: str) -> None:
    array = np.zeros(3, dtype=numpy_dtype(datatype))
    assert datatype_of(array) == datatype


def test_unknown_datatype_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        numpy_dtype("FLOAT")
    assert info.value.kind is ErrorKind.INVALID_INPUT
    assert "'FLOAT'" in info.value.message and "BOOL" in info.value.message


def test_strings_are_bytes() -> None:
    assert datatype_of(np.array(["a", "bc"])) == "BYTES"
    assert datatype_of(np.array([b"a", b"bc"])) == "BYTES"


def test_numpy_type_without_a_datatype() -> None:
    with pytest.raises(InvalidInput, match="complex128"):
        datatype_of(np.zeros(2, dtype=np.complex128))


def test_as_bytes_array_encodes_str_as_utf8() -> None:
    out = as_bytes_array(np.array([["é", "b"], ["c", ""]]))
    assert out.dtype == np.object_ and out.shape == (2, 2)
    assert out.tolist() == [["é".encode(), b"b"], [b"c", b""]]


def test_as_bytes_array_keeps_a_bytes_object_array() -> None:
    array = np.array([b"x", b"yz"], dtype=np.object_)
    assert as_bytes_array(array) is array


def test_tensor_shape() -> None:
    assert Tensor("x", "FP32", np.zeros((2, 3), np.float32)).shape == (2, 3)
