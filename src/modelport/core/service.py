"""InferenceService: the one core every protocol adapter calls.

REST, gRPC, the compat APIs, the web page and the CLI all parse their wire format into
an :class:`InferenceRequest`, call :meth:`InferenceService.infer`, and encode the
:class:`InferenceResponse`. Validation against the model's signature lives here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modelport.core.batcher import BatchResult
from modelport.core.registry import IndexRow, LoadedVersion, ModelRegistry, ModelState
from modelport.core.stats import ModelStats
from modelport.errors import (
    Cancelled,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    Overloaded,
)
from modelport.spec import ModelSpec, TensorSpec
from modelport.tensors import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    Tensor,
    as_bytes_array,
    datatype_of,
    numpy_dtype,
    too_many_elements,
)

# Triton's platform names, so clients that switch on them keep working.
PLATFORMS = {
    "onnx": "onnxruntime_onnx",
    "torch": "pytorch_libtorch",
    "tensorflow": "tensorflow_savedmodel",
    "python": "python",
}


def platform_of(spec: ModelSpec) -> str:
    """Triton's platform name of a model; a model served through other workers keeps
    the platform its workers report (``parameters.platform``)."""
    return str(spec.parameters.get("platform") or PLATFORMS.get(spec.runtime, spec.runtime))


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


@dataclass(frozen=True, slots=True)
class StartedInference:
    """A validated request on its way through the batcher (see ``InferenceService.start``)."""

    loaded: LoadedVersion
    request: InferenceRequest
    names: list[str]
    begun: int
    future: asyncio.Future[BatchResult]


@dataclass(frozen=True, slots=True)
class VersionStats:
    name: str
    version: str
    stats: ModelStats


class Peers(Protocol):
    """The server's other processes (``--processes N``), as the core sees them."""

    async def broadcast(self, action: str, model: str) -> None:
        """Apply ``action`` ("load" or "unload") of ``model`` in every other process."""

    async def statistics(self, model: str, version: str) -> list[VersionStats]:
        """The other processes' counters of ``model`` (every model if "")."""


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        version: str,
        admin_refusal: str = "",
        max_tensor_elements: int = 0,
        peers: Peers | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.version = version
        # Elements one input tensor may have (0: any); the decoders check it too, before
        # they allocate, and this check covers every other way in.
        self.max_tensor_elements = max_tensor_elements
        # Why admin calls (load, unload) are refused on this server; "" allows them.
        self.admin_refusal = admin_refusal
        # With several server processes: the others, told of loads and unloads and asked
        # for their statistics (gather_statistics adds them up).
        self._peers = peers

    # -- health ---------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once every model has finished loading (failed ones do not block it)."""
        return self.registry.initial_load_done and all(
            e.state is not ModelState.LOADING for e in self.registry.entries.values()
        )

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.registry.get(name, version)
        except ModelUnavailable:
            return False
        return True

    # -- inference ------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        started = self.start(request)
        with contextlib.suppress(ModelportError):  # finish() records and raises it
            await started.future
        return self.finish(started)

    def start(
        self, request: InferenceRequest, done: Callable[[], None] | None = None
    ) -> StartedInference:
        """Validate a request and queue it; :meth:`finish` once ``future`` is done, which
        is when ``done`` is called (never before ``start`` has returned).

        The two halves let the HTTP fast path answer from a callback, with no task per
        request; :meth:`infer` is the same two halves with an ``await`` between them.
        """
        loaded = self.registry.get(request.model_name, request.model_version)
        begun = time.perf_counter_ns()
        try:
            inputs = _check_inputs(loaded, request.inputs, self.max_tensor_elements)
            names = _check_outputs(loaded, request.outputs)
            future = loaded.batcher.submit(inputs, request.parameters, done)
        except ModelportError as exc:
            loaded.stats.record_request(False, time.perf_counter_ns() - begun, 0, exc.kind.value)
            raise
        return StartedInference(loaded, request, names, begun, future)

    def finish(self, started: StartedInference) -> InferenceResponse:
        """The response of a started request whose future is done; raises its error."""
        loaded, request = started.loaded, started.request
        try:
            if started.future.cancelled():
                raise Cancelled(
                    f"the request to model '{loaded.name}' was cancelled before it was "
                    "answered (its client gave up)"
                )
            error = started.future.exception()
            if error is not None:
                raise error
            result = started.future.result()
            outputs = _build_outputs(loaded, result.outputs, started.names, request.outputs)
        except ModelportError as exc:
            elapsed = time.perf_counter_ns() - started.begun
            loaded.stats.record_request(False, elapsed, 0, exc.kind.value)
            raise
        loaded.stats.record_request(True, time.perf_counter_ns() - started.begun, result.queue_ns)
        return InferenceResponse(loaded.name, str(loaded.version), outputs, request.id, {})

    # -- metadata, repository, statistics -------------------------------------------------

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        loaded = self.registry.get(name, version)
        entry = self.registry.entries[name]
        batch = (-1,) if loaded.spec.batches else ()

        def with_batch(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(t.model_copy(update={"shape": (*batch, *t.shape)}) for t in specs)

        return ModelMetadata(
            name,
            tuple(str(v) for v in sorted(entry.versions)),
            platform_of(loaded.spec),
            with_batch(loaded.signature.inputs),
            with_batch(loaded.signature.outputs),
            loaded.spec.max_batch_size,
        )

    def get_version(self, name: str, version: str = "") -> LoadedVersion:
        return self.registry.get(name, version)

    def version_for_label(self, name: str, label: str) -> str:
        """The version a label of ``version_labels`` in model.yaml names (TF Serving's
        version labels, e.g. ``{stable: 1, canary: 2}``)."""
        loaded = self.registry.get(name)
        labels = loaded.spec.version_labels
        if not labels:
            raise ModelNotFound(
                f"model '{name}' has no version labels configured; add "
                f"'version_labels: {{{label}: <version>}}' to its model.yaml"
            )
        version = labels.get(label)
        if version is None:
            raise ModelNotFound(
                f"model '{name}' has no version label '{label}'; its labels are {sorted(labels)}"
            )
        return str(version)

    def model_status(self, name: str, version: str = "") -> list[IndexRow]:
        """The state of each version of one model (or of ``version``), as in the index.
        A model that serves no version has one row, with an empty version."""
        rows = [r for r in self.registry.index() if r.name == name]
        if not rows:
            raise ModelNotFound(f"unknown model '{name}'")
        if version and rows[0].version:
            rows = [r for r in rows if r.version == version]
            if not rows:
                raise ModelNotFound(f"model '{name}' has no version {version}")
        return rows

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        rows = self.registry.index()
        return [r for r in rows if r.state == "READY"] if ready_only else rows

    async def load(self, name: str) -> None:
        self._check_admin()
        await self.registry.load(name)
        if self._peers is not None:
            await self._peers.broadcast("load", name)

    async def unload(self, name: str) -> None:
        self._check_admin()
        await self.registry.unload(name)
        if self._peers is not None:
            await self._peers.broadcast("unload", name)

    def _check_admin(self) -> None:
        if self.admin_refusal:
            raise Forbidden(self.admin_refusal)

    async def gather_statistics(self, name: str = "", version: str = "") -> list[VersionStats]:
        """:meth:`statistics`, added up over every server process (with one process,
        the same). What the statistics extension answers over HTTP and gRPC."""
        found = self.statistics(name, version)
        if self._peers is None:
            return found
        elsewhere = await self._peers.statistics(name, version)
        merged = []
        for entry in found:
            total = ModelStats()
            total.add_counters(entry.stats.counters())
            for other in elsewhere:
                if (other.name, other.version) == (entry.name, entry.version):
                    total.add_counters(other.stats.counters())
            merged.append(VersionStats(entry.name, entry.version, total))
        return merged

    def statistics(self, name: str = "", version: str = "") -> list[VersionStats]:
        """This process's own counters (see :meth:`gather_statistics`)."""
        if not name:
            return [
                VersionStats(e.name, str(v), lv.stats)
                for e in self.registry.entries.values()
                for v, lv in sorted(e.versions.items())
            ]
        entry = self.registry.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if version:
            loaded = self.registry.get(name, version)
            return [VersionStats(name, version, loaded.stats)]
        return [VersionStats(name, str(v), lv.stats) for v, lv in sorted(entry.versions.items())]


def _check_inputs(
    loaded: LoadedVersion, tensors: tuple[Tensor, ...], max_elements: int
) -> dict[str, np.ndarray]:
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
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInput(f"model '{loaded.name}' needs input(s) {missing}, which are missing")
    return inputs


def _check_outputs(loaded: LoadedVersion, requested: tuple[RequestedOutput, ...]) -> list[str]:
    declared = [t.name for t in loaded.signature.outputs]
    if not requested:
        return declared
    names = [r.name for r in requested]
    unknown = [n for n in names if declared and n not in declared]
    if unknown:
        raise InvalidInput(
            f"model '{loaded.name}' has no output(s) {unknown}; its outputs are {declared}"
        )
    return names


def _build_outputs(
    loaded: LoadedVersion,
    result: Mapping[str, np.ndarray],
    names: list[str],
    requested: tuple[RequestedOutput, ...],
) -> tuple[Tensor, ...]:
    specs = {t.name: t for t in loaded.signature.outputs}
    params = {r.name: r.parameters for r in requested}
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
        if datatype == "BYTES":
            array = as_bytes_array(array)
        elif array.dtype != numpy_dtype(datatype):
            array = array.astype(numpy_dtype(datatype))
        out.append(Tensor(name, datatype, array, params.get(name, {})))
    return tuple(out)


class LoopModelCaller:
    """A :class:`ModelCaller` for runtimes: calls the service from the runtime's thread
    by scheduling on the event loop and waiting. Inputs are cast to the called model's
    declared datatypes, so a pipeline can pass plain numpy arrays."""

    def __init__(self) -> None:
        self._service: InferenceService | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, service: InferenceService, loop: asyncio.AbstractEventLoop) -> None:
        self._service, self._loop = service, loop

    def infer(
        self, model: str, inputs: Mapping[str, Any], version: str = ""
    ) -> dict[str, np.ndarray]:
        if self._service is None or self._loop is None:
            raise ModelUnavailable("models cannot be called before the server has started")
        loaded = self._service.registry.get(model, version)
        tensors = []
        for name, value in inputs.items():
            spec = loaded.inputs_by_name.get(name)
            array = np.asarray(value)
            if spec is not None and spec.datatype != "BYTES":
                array = array.astype(numpy_dtype(spec.datatype), copy=False)
            elif spec is not None:
                array = as_bytes_array(array)
            tensors.append(Tensor(name, spec.datatype if spec else datatype_of(array), array))
        request = InferenceRequest(model, tuple(tensors), version)
        future = asyncio.run_coroutine_threadsafe(self._service.infer(request), self._loop)
        try:
            return {t.name: t.data for t in future.result().outputs}
        except (ModelUnavailable, Overloaded):
            raise
        except ModelportError as exc:
            # The pipeline built a bad call: the pipeline's fault, not its client's.
            raise InferenceFailed(f"calling model '{model}' failed: {exc.message}") from exc
