"""The request ``modelport bench`` repeats: shapes from metadata, data, encodings.

Each encoding is read back by modelport's own decoders, so what bench sends is what a
v2 server parses.
"""

from __future__ import annotations

import numpy as np
import pytest

from modelport.cli.bench.errors import BenchError
from modelport.cli.bench.inputs import (
    ModelSignature,
    TensorSpec,
    binary_body,
    grpc_request,
    json_body,
    parse_shapes,
    random_inputs,
    resolve_shapes,
)
from modelport.codecs.v2_json import decode_request
from modelport.protos import grpc_service_pb2 as pb

pytestmark = pytest.mark.timeout(10)

BATCHED = ModelSignature(
    "m",
    (TensorSpec("image", "FP32", (-1, 3, -1)), TensorSpec("ids", "INT64", (-1, 4))),
    batches=True,
)


def test_the_batch_dimension_defaults_to_one_and_others_need_a_shape() -> None:
    with pytest.raises(BenchError, match=r"input 'image' has a dynamic dimension.*image:1,3,16"):
        resolve_shapes(BATCHED, {})
    shapes = resolve_shapes(BATCHED, parse_shapes(["image:2,3,8"]))
    assert shapes == {"image": (2, 3, 8), "ids": (1, 4)}


def test_a_shape_may_leave_the_batch_out_as_perf_analyzer_s_does() -> None:
    assert resolve_shapes(BATCHED, parse_shapes(["image:3,8"]))["image"] == (1, 3, 8)


def test_without_batching_a_leading_minus_one_is_not_a_batch() -> None:
    fixed = ModelSignature("m", (TensorSpec("x", "FP32", (-1, 2)),), batches=False)
    with pytest.raises(BenchError, match="--shape x:16,2"):
        resolve_shapes(fixed, {})


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["image"], "expected NAME:D1,D2"),
        (["image:0,3"], "positive sizes"),
        (["image:a,b"], "expected NAME:D1,D2"),
    ],
)
def test_malformed_shapes_are_refused(items: list[str], message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse_shapes(items)


def test_a_shape_for_an_unknown_input_names_the_real_ones() -> None:
    with pytest.raises(BenchError, match="has no such input; it has image, ids"):
        resolve_shapes(BATCHED, {"mask": (1,)})


def test_random_data_is_seeded_and_of_each_datatype() -> None:
    signature = ModelSignature(
        "m",
        (TensorSpec("f", "FP16", (2, 3)), TensorSpec("b", "BOOL", (4,)),
         TensorSpec("s", "BYTES", (1, 2)), TensorSpec("u", "UINT8", (5,))),
        batches=False,
    )  # fmt: skip
    shapes = resolve_shapes(signature, {})
    first, again = random_inputs(signature, shapes, 7), random_inputs(signature, shapes, 7)
    other = random_inputs(signature, shapes, 8)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.array, b.array)
    assert not np.array_equal(first[0].array, other[0].array)
    assert [t.array.dtype.name for t in first] == ["float16", "bool", "object", "uint8"]
    assert all(isinstance(item, bytes) and len(item) == 16 for item in first[2].array.flat)


def test_the_json_and_binary_bodies_decode_to_the_same_tensors() -> None:
    signature = ModelSignature(
        "m", (TensorSpec("x", "FP32", (-1, 3)), TensorSpec("s", "BYTES", (-1, 2))), batches=True
    )
    tensors = random_inputs(signature, resolve_shapes(signature, {}), 0)
    from_json = decode_request(json_body(tensors), None, "m", "").request.inputs
    binary = binary_body(tensors)
    decoded = decode_request(binary.body, binary.json_length, "m", "")
    assert decoded.binary_output
    for sent, as_json, as_binary in zip(tensors, from_json, decoded.request.inputs, strict=True):
        assert as_json.name == as_binary.name == sent.name
        assert np.array_equal(as_binary.data, sent.array)
        assert np.array_equal(as_json.data, sent.array)


def test_the_grpc_request_carries_raw_contents() -> None:
    signature = ModelSignature("m", (TensorSpec("x", "INT64", (-1, 2)),), batches=True)
    tensors = random_inputs(signature, resolve_shapes(signature, {}), 0)
    request = pb.ModelInferRequest.FromString(grpc_request("m", "2", tensors).SerializeToString())
    assert (request.model_name, request.model_version) == ("m", "2")
    assert list(request.inputs[0].shape) == [1, 2]
    raw = np.frombuffer(request.raw_input_contents[0], dtype="<i8").reshape(1, 2)
    assert np.array_equal(raw, tensors[0].array)
