"""Property tests of the parsers that read what clients send: the v2 JSON body (with
Triton's binary data after it), raw binary tensors, and zips of task files.

Each takes anything at all, and either gives a well-formed result or raises the one
error meant for a bad request (InvalidInput), never anything else. The cases each test
tried are printed (``pytest -s``) and counted in the assertions.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.codecs.v2_binary import decode_tensor, encode_tensor
from modelport.codecs.v2_json import decode_request
from modelport.errors import InvalidInput
from modelport.tasks.archives import ZipLimits, extract_zip
from modelport.tensors import DATATYPES, element_count

FUZZ = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
DATATYPE_NAMES = [*DATATYPES, "FP8", "", "fp32"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)
shapes = st.lists(st.integers(min_value=-2, max_value=6), max_size=4) | json_values
data_values = st.lists(
    st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.text(max_size=4))
    | st.lists(st.integers(-300, 300), max_size=4),
    max_size=12,
)
inputs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "", "INPUT0"]) | json_values,
        "datatype": st.sampled_from(DATATYPE_NAMES) | json_values,
        "shape": shapes,
        "data": data_values | json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-4, 64) | json_values}
        )
        | json_values,
    },
)


@st.composite
def well_formed_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """An input whose data fits its shape, in a datatype that may not fit the values."""
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    count = element_count(tuple(shape))
    value = st.integers(-(2**65), 2**65) | st.floats() | st.booleans() | st.text(max_size=3)
    return {
        "name": draw(st.sampled_from(["x", "y"])),
        "datatype": draw(st.sampled_from(list(DATATYPES))),
        "shape": shape,
        "data": draw(st.lists(value, min_size=count, max_size=count)),
    }


documents = st.fixed_dictionaries(
    {"inputs": st.lists(well_formed_inputs(), min_size=1, max_size=3)}
) | st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.lists(inputs, max_size=3) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({}, optional={"name": json_values, "parameters": json_values}),
            max_size=2,
        )
        | json_values,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "k"]), json_values)
        | json_values,
    },
)


class Counter:
    def __init__(self, name: str) -> None:
        self.name, self.ok, self.refused = name, 0, 0

    def report(self) -> int:
        total = self.ok + self.refused
        print(f"\n{self.name}: {total} cases ({self.ok} parsed, {self.refused} refused)")
        return total


def test_v2_json_body_is_parsed_or_refused() -> None:
    seen = Counter("v2 JSON documents")

    @FUZZ
    @given(doc=documents, tail=st.binary(max_size=64), header=st.none() | st.integers(-2, 600))
    def run(doc: dict[str, Any], tail: bytes, header: int | None) -> None:
        head = json.dumps(doc).encode()  # big ints and NaN too, which orjson refuses
        body = head + tail if header is not None else head
        length = None if header is None else min(header, len(head) + 8)
        try:
            decoded = decode_request(body, length, "m", "", max_elements=1000)
        except InvalidInput as exc:
            assert exc.message
            seen.refused += 1
            return
        seen.ok += 1
        for tensor in decoded.request.inputs:
            assert tensor.datatype in DATATYPES and tensor.data.dtype == DATATYPES[tensor.datatype]
            assert tensor.data.size <= 1000

    run()
    assert seen.report() >= 400


def test_any_bytes_as_a_v2_body_are_refused_cleanly() -> None:
    seen = Counter("v2 bodies of random bytes")

    @FUZZ
    @given(body=st.binary(max_size=200), header=st.none() | st.integers(-5, 300))
    def run(body: bytes, header: int | None) -> None:
        try:
            decode_request(body, header, "m", "")
            seen.ok += 1
        except InvalidInput:
            seen.refused += 1

    run()
    assert seen.report() >= 400


def test_binary_tensors_are_decoded_or_refused() -> None:
    seen = Counter("binary tensors")

    @FUZZ
    @given(
        datatype=st.sampled_from(list(DATATYPES)),
        shape=st.lists(st.integers(0, 5), max_size=3),
        raw=st.binary(max_size=80),
    )
    def run(datatype: str, shape: list[int], raw: bytes) -> None:
        try:
            array = decode_tensor("x", datatype, tuple(shape), raw)
        except InvalidInput:
            seen.refused += 1
            return
        seen.ok += 1
        assert array.shape == tuple(shape) and array.dtype == DATATYPES[datatype]
        assert encode_tensor(array, datatype) == raw  # what was read is what was sent

    run()
    assert seen.report() >= 400


def test_binary_tensors_round_trip() -> None:
    seen = Counter("binary round trips")

    @FUZZ
    @given(
        datatype=st.sampled_from([d for d in DATATYPES if d != "BYTES"]),
        shape=st.lists(st.integers(0, 4), max_size=3),
        seed=st.integers(0, 2**32 - 1),
    )
    def run(datatype: str, shape: list[int], seed: int) -> None:
        raw = np.random.default_rng(seed).bytes(
            element_count(tuple(shape)) * DATATYPES[datatype].itemsize
        )
        if datatype == "BOOL":
            raw = bytes(b & 1 for b in raw)
        array = decode_tensor("x", datatype, tuple(shape), raw)
        assert encode_tensor(array, datatype) == raw
        seen.ok += 1

    run()
    assert seen.report() >= 400


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_bytes_tensors_with_lying_lengths_are_refused() -> None:
    seen = Counter("BYTES tensors")

    @FUZZ
    @given(items=st.lists(st.binary(max_size=6), max_size=5), cut=st.integers(0, 40))
    def run(items: list[bytes], cut: int) -> None:
        raw = _bytes_tensor(items)
        truncated = raw[: max(0, len(raw) - cut)]
        try:
            array = decode_tensor("x", "BYTES", (len(items),), truncated)
        except InvalidInput:
            assert cut > 0 and raw
            seen.refused += 1
            return
        assert list(array) == items
        seen.ok += 1

    run()
    assert seen.report() >= 400


member_names = st.one_of(
    st.text(alphabet="ab./\\:", min_size=1, max_size=12),
    st.sampled_from(["../x", "/etc/x", "C:\\x", "a/../../x", "a", "a/b", "a/", ".", "./"]),
)
members = st.lists(
    st.tuples(member_names, st.binary(max_size=64), st.booleans()), min_size=1, max_size=6
)


@pytest.fixture(scope="module")
def scratch() -> Any:
    with tempfile.TemporaryDirectory(prefix="modelport-fuzz-") as folder:
        yield Path(folder)


def _zip(entries: list[tuple[str, bytes, bool]], corrupt: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names: a zip from a stranger has them
        for name, data, deflate in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            archive.writestr(info, data)
    raw = bytearray(buffer.getvalue())
    if corrupt and raw:
        raw[corrupt % len(raw)] ^= 0xFF
    return bytes(raw)


def test_zips_are_unpacked_inside_the_folder_or_refused(scratch: Path) -> None:
    seen = Counter("zips")
    limits = ZipLimits(max_members=5, max_unpacked_bytes=200, max_ratio=200.0)
    cases = itertools.count()

    @FUZZ
    @given(entries=members, corrupt=st.integers(0, 400) | st.just(0))
    def run(entries: list[tuple[str, bytes, bool]], corrupt: int) -> None:
        case = scratch / f"case-{next(cases)}"
        case.mkdir()
        (case / "upload.zip").write_bytes(_zip(entries, corrupt))
        dest = case / "out"
        dest.mkdir()
        try:
            written = extract_zip(case / "upload.zip", dest, limits)
        except InvalidInput as exc:
            assert exc.message
            seen.refused += 1
            return
        seen.ok += 1
        assert written <= limits.max_unpacked_bytes
        for path in dest.rglob("*"):
            assert dest.resolve() in path.resolve().parents and not path.is_symlink()
        # Nothing was written beside the destination.
        assert sorted(p.name for p in case.iterdir()) == ["out", "upload.zip"]

    run()
    assert seen.report() >= 400
