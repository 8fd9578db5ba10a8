"""A request checked against its model's signature, and the model's outputs made to
match it: the validation every transport's requests go through, once, in the core
(:meth:`~modelport.core.service.InferenceService.start` and ``finish``). Triton's
classification extension is applied here too, so every transport answers it alike: a
requested output with ``parameters.classification: N`` is answered as its top N classes
(:func:`~modelport.codecs.classification.triton_classes`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelport.codecs.classification import triton_classes
from modelport.core.batcher import QueueTerms
from modelport.core.entries import LoadedVersion
from modelport.errors import InvalidInput, ModelUnavailable
from modelport.tensors import (
    InferenceRequest,
    RequestedOutput,
    Tensor,
    as_bytes_array,
    datatype_of,
    numpy_dtype,
    too_many_elements,
)

# The requested output's parameter of Triton's classification extension.
CLASSIFICATION = "classification"


def checked_inputs(
    loaded: LoadedVersion, tensors: tuple[Tensor, ...], max_elements: int
) -> dict[str, np.ndarray]:
    """The request's inputs by name, once each has the name, datatype and shape (batch
    size included) the model declares; ``max_elements`` caps one tensor (0: any)."""
    expected = loaded.inputs_by_name
    batching = loaded.spec.max_batch_size
    inputs: dict[str, np.ndarray] = {}
    rows = -1
    for tensor in tensors:
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidInput(
                f"model '{loaded.name}' has no input '{tensor.name}'; "
                f"its inputs are {list(expected)}"
            )
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input '{tensor.name}' has datatype {tensor.datatype}, but model "
                f"'{loaded.name}' expects {spec.datatype}"
            )
        shape = tensor.data.shape
        if max_elements and tensor.data.size > max_elements:
            raise too_many_elements(tensor.name, shape, tensor.data.size, max_elements)
        dims = shape[1:] if batching else shape
        ok_rank = len(dims) == len(spec.shape) and (not batching or len(shape) >= 1)
        if not ok_rank or any(w != -1 and w != d for w, d in zip(spec.shape, dims, strict=False)):
            want = ("-1", *map(str, spec.shape)) if batching else tuple(map(str, spec.shape))
            raise InvalidInput(
                f"input '{tensor.name}' has shape {list(shape)}, but model '{loaded.name}' "
                f"expects [{', '.join(want)}] (-1 is any size)"
            )
        if batching:
            if not 1 <= shape[0] <= batching:
                raise InvalidInput(
                    f"input '{tensor.name}' has batch size {shape[0]}; model "
                    f"'{loaded.name}' takes 1 to {batching} (max_batch_size)"
                )
            if rows not in (-1, shape[0]):
                raise InvalidInput("all inputs of one request need the same batch size")
            rows = shape[0]
        inputs[tensor.name] = tensor.data
    missing = [name for name, spec in expected.items() if name not in inputs and not spec.optional]
    if missing:
        raise InvalidInput(f"model '{loaded.name}' needs input(s) {missing}, which are missing")
    return inputs


def output_names(loaded: LoadedVersion, requested: tuple[RequestedOutput, ...]) -> list[str]:
    """The outputs to answer with: those requested (each one the model declares), or
    every declared one."""
    declared = [t.name for t in loaded.signature.outputs]
    if not requested:
        return declared
    names = [r.name for r in requested]
    unknown = [n for n in names if declared and n not in declared]
    if unknown:
        raise InvalidInput(
            f"model '{loaded.name}' has no output(s) {unknown}; its outputs are {declared}"
        )
    for output in requested:
        _class_count(loaded, output)
    return names


def _class_count(loaded: LoadedVersion, output: RequestedOutput) -> int:
    """The classes asked of ``output`` (0: none), InvalidInput for a count that is not
    a positive whole number or an output that holds no scores."""
    count = output.parameters.get(CLASSIFICATION)
    if count is None:
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput(
            f"output '{output.name}': parameter '{CLASSIFICATION}' is the number of classes "
            f"to return, a whole number of 1 or more; got {count!r}"
        )
    spec = next((t for t in loaded.signature.outputs if t.name == output.name), None)
    if spec is not None and spec.datatype in ("BYTES", "BOOL"):
        raise InvalidInput(
            f"output '{output.name}' is {spec.datatype}; classification needs numeric scores"
        )
    return count


def declared_outputs(
    loaded: LoadedVersion,
    result: Mapping[str, np.ndarray],
    *,
    names: list[str],
    requested: tuple[RequestedOutput, ...],
) -> tuple[Tensor, ...]:
    """The runtime's ``result`` as the response's tensors: the ``names`` outputs, each
    cast to its declared datatype and carrying its request's parameters."""
    specs = {t.name: t for t in loaded.signature.outputs}
    params = {r.name: r.parameters for r in requested}
    classes = {r.name: _class_count(loaded, r) for r in requested}
    out: list[Tensor] = []
    for name in names or list(result):
        array = result.get(name)
        if array is None:
            raise ModelUnavailable(
                f"model '{loaded.name}' did not produce its declared output '{name}'"
            )
        spec = specs.get(name)
        array = np.asarray(array)
        datatype = spec.datatype if spec else datatype_of(array)
        if classes.get(name):
            labels = loaded.output_labels.get(name) or loaded.labels
            array = triton_classes(array, classes[name], labels, batched=loaded.spec.batches)
            datatype = "BYTES"
        elif datatype == "BYTES":
            array = as_bytes_array(array)
        elif array.dtype != numpy_dtype(datatype):
            array = array.astype(numpy_dtype(datatype))
        out.append(Tensor(name, datatype, array, params.get(name, {})))
    return tuple(out)


# The v2 parameters the core reads itself (Triton's names) and never passes to a model.
QUEUE_PARAMETERS = frozenset({"timeout", "priority"})


def queue_terms(request: InferenceRequest) -> tuple[QueueTerms, dict[str, Any]]:
    """The request's deadline and priority (from ``deadline_ns`` and the parameters
    ``timeout``, in microseconds as Triton reads it, and ``priority``), and its
    parameters without those two."""
    parameters = dict(request.parameters)
    timeout_us = _count(parameters.pop("timeout", 0), "timeout", "microseconds in the queue")
    priority = _count(parameters.pop("priority", 0), "priority", "a level, 1 first")
    deadline_ns = request.deadline_ns
    if timeout_us:
        mine = time.monotonic_ns() + timeout_us * 1000
        deadline_ns = min(deadline_ns, mine) if deadline_ns else mine
    return QueueTerms(deadline_ns, priority), parameters


def _count(value: Any, name: str, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"parameter '{name}' must be a non-negative integer ({meaning}), not {value!r}"
        )
    return value
