"""Warm-up: requests run on every instance of a version before it reports READY.

Each ``warmup`` entry of model.yaml names, per input, where the sample comes from:
``zeros`` (the default), ``random`` (uniform in [0, 1) of the declared shape), a literal
nested list, or ``{file: path}``, a file in the model's folder: ``.npy`` arrays are
loaded as saved (a missing batch dimension is added), any other file is the raw bytes,
as Triton's ``input_data_file`` reads them (one element of a BYTES input, such as an
encoded image, or the tensor's values in native byte order)::

    warmup:
      - inputs: {INPUT0: random}
        batch_size: 4
        count: 3
      - inputs: {IMAGE: {file: warmup/cat.jpg}}

The time the whole warm-up took is logged and kept in the version's statistics
(``warmup_ns``, in the v2 statistics JSON).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.instances import Instance
from modelport.core.runtime import Signature
from modelport.core.stats import ModelStats
from modelport.errors import SpecError
from modelport.spec import ModelSpec, TensorSpec, WarmupSpec
from modelport.tensors import numpy_dtype

log = logging.getLogger("modelport.registry")


def warmup_inputs(
    signature: Signature,
    spec: ModelSpec,
    sample: WarmupSpec,
    *,
    rng: np.random.Generator,
    folder: Path | None = None,
) -> dict[str, np.ndarray]:
    """Build one warm-up request from a ``warmup`` entry of model.yaml; files are
    looked up in ``folder`` (the model's folder)."""
    inputs: dict[str, np.ndarray] = {}
    for tensor in signature.inputs:
        given = sample.shapes.get(tensor.name)  # Triton's dims, where the sample gives them
        shape = tuple(given) if given else tuple(1 if d == -1 else d for d in tensor.shape)
        if spec.batches:
            shape = (sample.batch_size, *shape)
        how: Any = sample.inputs.get(tensor.name, "zeros")
        dtype = numpy_dtype(tensor.datatype)
        if isinstance(how, Mapping):
            inputs[tensor.name] = _from_file(
                tensor, shape, batches=spec.batches, how=how, folder=folder
            )
        elif tensor.datatype == "BYTES":
            inputs[tensor.name] = np.full(shape, b"", dtype=np.object_)
        elif how == "zeros":
            inputs[tensor.name] = np.zeros(shape, dtype)
        elif how == "random":
            inputs[tensor.name] = rng.random(shape).astype(dtype)
        else:
            inputs[tensor.name] = np.asarray(how, dtype=dtype).reshape(shape)
    return inputs


def _from_file(
    tensor: TensorSpec,
    shape: tuple[int, ...],
    *,
    batches: bool,
    how: Mapping[str, Any],
    folder: Path | None,
) -> np.ndarray:
    name = how.get("file")
    if not isinstance(name, str) or set(how) != {"file"} or folder is None:
        raise ValueError(f"input '{tensor.name}': expected {{file: <path>}}, got {dict(how)}")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"input '{tensor.name}': {name} is outside the model's folder")
    if path.suffix == ".npy":
        array: np.ndarray = np.load(path, allow_pickle=False)
        if batches and array.ndim == len(shape) - 1:
            array = np.repeat(array[np.newaxis], shape[0], axis=0)
        return array.astype(numpy_dtype(tensor.datatype), copy=False)
    data = path.read_bytes()
    if tensor.datatype == "BYTES":
        array = np.empty(shape, dtype=np.object_)
        array.fill(data)
        return array
    return np.frombuffer(data, numpy_dtype(tensor.datatype)).reshape(shape).copy()


async def warm_up(
    spec: ModelSpec,
    version: int,
    *,
    signature: Signature,
    instances: list[Instance],
    stats: ModelStats,
    folder: Path,
) -> None:
    """Run the ``warmup`` samples on every instance; SpecError names what failed."""
    if not spec.warmup:
        return
    name = spec.name
    start = time.perf_counter_ns()
    rng = np.random.default_rng(0)
    try:
        for sample in spec.warmup:
            inputs = warmup_inputs(signature, spec, sample, rng=rng, folder=folder)
            for _ in range(sample.count):
                for inst in instances:
                    await asyncio.to_thread(inst.run_blocking, inputs, {})
    except Exception as exc:
        raise SpecError(
            f"model '{name}' version {version}: warm-up failed: "
            f"{type(exc).__name__}: {exc}; check the 'warmup' field of its model.yaml"
        ) from exc
    stats.warmup_ns = time.perf_counter_ns() - start
    log.info("model %s v%d warmed up in %.1f ms", name, version, stats.warmup_ns / 1e6)
