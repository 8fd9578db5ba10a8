"""The request a benchmark repeats: inputs built from the model's metadata.

Shapes come from the metadata; a dynamic dimension (-1) is the batch dimension (set to
1) when the model batches, and otherwise must be given with ``--shape NAME:1,16``. The
data is random (seeded, so two runs send the same bytes) or read from a file: JSON
``{name: nested list}``, ``.npz`` (one array a name) or ``.npy`` (a one-input model).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.cli.bench.errors import BenchError
from modelport.codecs.v2_binary import encode_tensor
from modelport.protos import grpc_service_pb2 as pb
from modelport.tensors import DATATYPES, numpy_dtype

# Random BYTES elements: printable, so they also travel in v2 JSON as strings.
RANDOM_STRING_LENGTH = 16
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input as the server's metadata describes it (-1: a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a benchmark needs of a model: its inputs, and whether dimension 0 is a batch."""

    name: str
    inputs: tuple[TensorSpec, ...]
    batches: bool


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One input of the benchmark's request, with its data."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


@dataclass(frozen=True, slots=True)
class BinaryBody:
    """A v2 request with binary tensor data, and the length of its JSON part."""

    body: bytes
    json_length: int


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``--shape NAME:1,16`` options as shapes by input name."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise BenchError(f"--shape {item!r}: expected NAME:D1,D2,... with positive sizes")
        shapes[name] = shape
    return shapes


def resolve_shapes(
    signature: ModelSignature, given: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """The concrete shape of every input: given ones checked, the others from metadata."""
    names = [spec.name for spec in signature.inputs]
    for name in given:
        if name not in names:
            raise BenchError(f"--shape {name}: model '{signature.name}' has no such input; "
                             f"it has {', '.join(names)}")  # fmt: skip
    return {spec.name: _shape_of(spec, given.get(spec.name), signature.batches)
            for spec in signature.inputs}  # fmt: skip


def _shape_of(spec: TensorSpec, given: tuple[int, ...] | None, batches: bool) -> tuple[int, ...]:
    declared = list(spec.shape)
    if given is None:
        if batches and declared and declared[0] == -1:
            declared[0] = 1
        if -1 in declared:
            example = ",".join("16" if d == -1 else str(d) for d in declared)
            raise BenchError(
                f"input '{spec.name}' has a dynamic dimension (shape {list(spec.shape)}): "
                f"give its size, e.g. --shape {spec.name}:{example}"
            )
        return tuple(declared)
    # perf_analyzer's --shape leaves the batch dimension out: take that form too.
    if batches and len(given) == len(declared) - 1:
        given = (1, *given)
    fits = len(given) == len(declared) and all(
        d in (-1, g) for d, g in zip(declared, given, strict=True)
    )
    if not fits:
        raise BenchError(
            f"--shape {spec.name}:{','.join(map(str, given))} does not fit the input's "
            f"shape {list(spec.shape)} (-1 is free)"
        )
    return given


def random_inputs(
    signature: ModelSignature, shapes: Mapping[str, tuple[int, ...]], seed: int
) -> list[InputTensor]:
    """Seeded random data of each input's datatype and shape."""
    rng = np.random.default_rng(seed)
    return [
        InputTensor(spec.name, spec.datatype, _random_array(rng, spec, shapes[spec.name]))
        for spec in signature.inputs
    ]


def _random_array(rng: np.random.Generator, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.datatype not in DATATYPES:
        raise BenchError(f"input '{spec.name}': datatype {spec.datatype} cannot be generated; "
                         "give the data with --input FILE")  # fmt: skip
    if spec.datatype == "BYTES":
        count = int(np.prod(shape))
        letters = rng.choice(_LETTERS, size=(count, RANDOM_STRING_LENGTH))
        array = np.empty(count, dtype=np.object_)
        array[:] = [row.tobytes() for row in letters]
        return array.reshape(shape)
    dtype = numpy_dtype(spec.datatype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        # Small non-negative values: valid as class ids, token ids or indices.
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def file_inputs(signature: ModelSignature, path: Path) -> list[InputTensor]:
    """Every input read from ``path`` (.json, .npz or .npy), cast to its datatype."""
    found = _read_arrays(signature, path)
    missing = [spec.name for spec in signature.inputs if spec.name not in found]
    if missing:
        raise BenchError(f"{path}: no data for input(s) {', '.join(missing)}")
    tensors = []
    for spec in signature.inputs:
        array = found[spec.name]
        if signature.batches and array.ndim == len(spec.shape) - 1:
            array = array[np.newaxis]
        tensors.append(InputTensor(spec.name, spec.datatype, _cast(spec, array)))
    return tensors


def _read_arrays(signature: ModelSignature, path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BenchError(f"--input {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            raise BenchError(f"{path}: expected a JSON object {{input name: nested list}}")
        return {name: np.asarray(value) for name, value in document.items()}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix == ".npy":
        if len(signature.inputs) != 1:
            names = ", ".join(spec.name for spec in signature.inputs)
            raise BenchError(f"{path}: a .npy file holds one array, and model "
                             f"'{signature.name}' takes {names}: use .npz or .json")  # fmt: skip
        return {signature.inputs[0].name: np.load(path, allow_pickle=False)}
    raise BenchError(f"--input {path}: expected a .json, .npz or .npy file, or 'random'")


def _cast(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    if spec.datatype == "BYTES":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.flat]
        cast = np.empty(len(items), dtype=np.object_)
        cast[:] = items
        return cast.reshape(array.shape)
    try:
        return array.astype(numpy_dtype(spec.datatype))
    except (TypeError, ValueError) as exc:
        raise BenchError(f"input '{spec.name}': cannot be read as {spec.datatype}: {exc}") from None


def json_body(tensors: list[InputTensor]) -> bytes:
    """The v2 JSON request: each input's data as a flat list."""
    return json.dumps({
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": _json_data(t)}
            for t in tensors
        ]
    }).encode()  # fmt: skip


def _json_data(tensor: InputTensor) -> list[object]:
    if tensor.datatype != "BYTES":
        return list(tensor.array.ravel().tolist())
    try:
        return [item.decode() for item in tensor.array.flat]
    except UnicodeDecodeError:
        raise BenchError(f"input '{tensor.name}' holds bytes that are not UTF-8, which v2 "
                         "JSON cannot carry: add --binary") from None  # fmt: skip


def binary_body(tensors: list[InputTensor]) -> BinaryBody:
    """The request with Triton's binary tensor data, asking for binary outputs too
    (what tritonclient.http sends by default)."""
    chunks = [encode_tensor(t.array, t.datatype) for t in tensors]
    head = json.dumps({
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape,
             "parameters": {"binary_data_size": len(chunk)}}
            for t, chunk in zip(tensors, chunks, strict=True)
        ],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return BinaryBody(head + b"".join(chunks), len(head))


def grpc_request(model: str, version: str, tensors: list[InputTensor]) -> pb.ModelInferRequest:
    """ModelInferRequest with every input in ``raw_input_contents``."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for tensor in tensors:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        request.raw_input_contents.append(encode_tensor(tensor.array, tensor.datatype))
    return request


def grpc_frame(message: bytes) -> bytes:
    """A serialized message as one gRPC frame: not compressed, then its length."""
    return struct.pack(">BI", 0, len(message)) + message
