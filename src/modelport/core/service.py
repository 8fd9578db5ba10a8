"""InferenceService: the one core every protocol adapter calls.

REST, gRPC, the compat APIs, the web page and the CLI all parse their wire format into
an :class:`InferenceRequest`, call :meth:`InferenceService.infer`, and encode the
:class:`InferenceResponse`. Validation against the model's signature lives here, once
(``validation.py``). Whatever else an adapter needs to know of a model (its metadata,
state, platform, Triton configuration, samples, counters) it asks the service too:
the registry behind it is the service's own, and nothing outside the core reaches it.
Every method that takes a model name takes an alias too (``aliases`` in model.yaml):
the registry resolves it here, so no adapter knows aliases exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelport.core.batcher import BatchResult
from modelport.core.cache import MemoryLimits
from modelport.core.caller import LoopModelCaller
from modelport.core.entries import IndexRow, LoadedVersion, ModelEntry, ModelState
from modelport.core.instances import NO_GPUS, Gpus
from modelport.core.registry import ModelRegistry
from modelport.core.repository import ModelRepository
from modelport.core.runtime import RuntimeFactory
from modelport.core.shared_memory import RegionStatus, SystemSharedMemory
from modelport.core.stats import ModelStats
from modelport.core.tracing import Tracer
from modelport.core.traffic import ModelTraffic
from modelport.core.triton_config import TritonConfig, platform_of, triton_config
from modelport.core.validation import (
    QUEUE_PARAMETERS,
    checked_inputs,
    declared_outputs,
    output_names,
    queue_terms,
)
from modelport.errors import (
    Cancelled,
    Forbidden,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
)
from modelport.spec import ModelSpec, TensorSpec
from modelport.tensors import InferenceRequest, InferenceResponse

# A model's sample inputs, for the web page: ``<repository>/<model>/samples/``.
SAMPLES_DIR = "samples"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelMetadata:
    """A model as KServe's metadata describes it (see :meth:`InferenceService.metadata`)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelView:
    """One model as the service holds it now: its state (and why), the model.yaml it was
    read from, and the versions that serve (none while evicted or unloaded)."""

    name: str
    state: ModelState
    reason: str
    spec: ModelSpec | None  # None: its model.yaml has not been read, or cannot be
    versions: tuple[LoadedVersion, ...]  # oldest first

    @property
    def latest(self) -> LoadedVersion | None:
        return self.versions[-1] if self.versions else None

    @property
    def platform(self) -> str:
        """Triton's platform name (see :func:`platform_of`); "" without a spec."""
        return platform_of(self.spec) if self.spec is not None else ""


def _view(entry: ModelEntry, spec: ModelSpec | None = None) -> ModelView:
    versions = tuple(loaded for _, loaded in sorted(entry.versions.items()))
    return ModelView(
        name=entry.name,
        state=entry.state,
        reason=entry.reason,
        spec=spec or entry.spec,
        versions=versions,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedInference:
    """A validated request on its way through the batcher (see ``InferenceService.start``)."""

    loaded: LoadedVersion
    request: InferenceRequest
    names: list[str]
    begun: int
    future: asyncio.Future[BatchResult]
    # The name the response carries when another model answered for this one (a
    # traffic split); "" for the loaded version's own.
    answered_as: str = ""


@dataclass(frozen=True, slots=True)
class VersionStats:
    """The counters of one model version (Triton's statistics extension)."""

    name: str
    version: str
    stats: ModelStats


class Peers(Protocol):
    """The server's other processes (``--processes N``), as the core sees them."""

    async def broadcast(self, action: str, model: str) -> None:
        """Apply ``action`` ("load" or "unload") of ``model`` in every other process."""

    async def statistics(self, model: str, version: str) -> list[VersionStats]:
        """The other processes' counters of ``model`` (every model if "")."""

    async def share_region(self, region: RegionStatus) -> None:
        """Register a shared-memory region in every other process (a key of "" forgets
        the region named, or every region when the name is "" too)."""


class InferenceService:
    """The core: models loaded from a repository, served to every adapter alike.

    Built once, whole: it makes its own :class:`~modelport.core.registry.ModelRegistry`
    (from ``repository`` and the ``runtimes`` by name) and the
    :class:`~modelport.core.runtime.ModelCaller` its runtimes call other models through,
    and nothing is set on it afterwards. :meth:`open` loads the models (inside the
    event loop that will serve them), :meth:`close` unloads them.

    Adapters call :meth:`infer` (or its two halves :meth:`start` and :meth:`finish`, on
    the hot paths), the health and metadata methods, and the admin calls :meth:`load` and
    :meth:`unload`. Every error is a :class:`~modelport.errors.ModelportError`; each
    transport maps its kind to a status.

    ``admin_refusal``: why admin calls are refused on this server ("" allows them).
    ``max_tensor_elements``: the elements one input tensor may have (0: any).
    ``peers``: the server's other processes (``--processes N``), told of loads and
    unloads and asked for their counters. ``tracer``: spans of requests, batches and
    hops (None: tracing is off).
    """

    def __init__(
        self,
        repository: ModelRepository,
        runtimes: Mapping[str, RuntimeFactory],
        *,
        name: str,
        version: str,
        limits: MemoryLimits | None = None,
        gpus: Gpus = NO_GPUS,
        admin_refusal: str = "",
        max_tensor_elements: int = 0,
        peers: Peers | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.name = name
        # Spans of requests, batches and hops (core/tracing.py); None: tracing is off.
        self.tracer = tracer
        self.version = version
        # The decoders check max_tensor_elements too, before they allocate; this check
        # covers every other way in.
        self.max_tensor_elements = max_tensor_elements
        self.admin_refusal = admin_refusal
        self._peers = peers
        self._registry = ModelRegistry(
            repository,
            runtimes,
            caller=LoopModelCaller(self),
            limits=limits,
            gpus=gpus,
            tracer=tracer,
        )
        # The loop the models serve on, known once opened: runtimes' threads call
        # other models through it (LoopModelCaller).
        self._loop: asyncio.AbstractEventLoop | None = None
        # Triton's system shared memory: the decoders read inputs from it and the
        # encoders write outputs into it (``register_region`` is an admin call).
        self.shared_memory = SystemSharedMemory()
        self._traffic: dict[str, ModelTraffic] = {}  # models with traffic or shadow
        self.draining = False  # set by drain(): the server is stopping

    # -- life -----------------------------------------------------------------------------

    async def open(self, models: Collection[str] | None = None) -> None:
        """Load every model of the repository (one that fails is listed UNAVAILABLE with
        its reason, and the others load), or only ``models`` (the others are listed, not
        loaded, until :meth:`load` loads them: Triton's explicit model control); from now
        on runtimes may call models. (Not :meth:`start`, which starts one inference.)"""
        self._loop = asyncio.get_running_loop()
        await self._registry.load_all(models)

    async def close(self) -> None:
        """Unload every model; each version first finishes the requests it accepted."""
        await self._registry.close()
        self.shared_memory.close()

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the models serve on, for calls from other threads (a runtime
        calling a model); ModelUnavailable before :meth:`open`."""
        if self._loop is None:
            raise ModelUnavailable("models cannot be called before the server has started")
        return self._loop

    # -- health ---------------------------------------------------------------------------

    def live(self) -> bool:
        """The process answers (KServe's liveness)."""
        return True

    def ready(self) -> bool:
        """Ready once every model has finished loading (failed ones do not block it), and
        until the server starts to drain."""
        return not self.draining and self.models_loaded()

    def models_loaded(self) -> bool:
        """Every model has finished loading (failed ones included)."""
        return self._registry.initial_load_done and all(
            e.state is not ModelState.LOADING for e in self._registry.entries.values()
        )

    def drain(self) -> None:
        """The server is stopping: health says not ready from now on, so load balancers
        send no more, while requests are still answered."""
        self.draining = True

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (at ``version``, else its latest) takes requests now;
        ModelNotFound for a model or version the server does not know."""
        try:
            self._registry.get(name, version)
        except ModelUnavailable:
            return False
        return True

    # -- inference ------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request: validate it against the model's signature, batch it with
        others, and answer with the outputs requested (every declared one by default)."""
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
        loaded = self._registry.get(request.model_name, request.model_version)
        spec = loaded.spec
        if request.model_version or not (spec.traffic or spec.shadow is not None):
            return self._start(loaded, request, done)
        return self._start_shared_out(loaded, request, done)

    def _start(
        self,
        loaded: LoadedVersion,
        request: InferenceRequest,
        done: Callable[[], None] | None,
        answered_as: str = "",
    ) -> StartedInference:
        begun = time.perf_counter_ns()
        try:
            inputs = checked_inputs(loaded, request.inputs, self.max_tensor_elements)
            names = output_names(loaded, request.outputs)
            if request.deadline_ns or (
                request.parameters and not QUEUE_PARAMETERS.isdisjoint(request.parameters)
            ):
                terms, parameters = queue_terms(request)
                future = loaded.batcher.submit(
                    inputs, parameters, done, request=request, terms=terms
                )
            else:
                future = loaded.batcher.submit(inputs, request.parameters, done, request=request)
        except ModelportError as exc:
            loaded.stats.record_request(False, time.perf_counter_ns() - begun, 0, exc.kind.value)
            raise
        return StartedInference(
            loaded=loaded,
            request=request,
            names=names,
            begun=begun,
            future=future,
            answered_as=answered_as,
        )

    def _start_shared_out(
        self, loaded: LoadedVersion, request: InferenceRequest, done: Callable[[], None] | None
    ) -> StartedInference:
        """A request to a model with ``traffic`` or ``shadow`` that names no version:
        the split picks who answers, and a share is copied to the shadow."""
        traffic = self._traffic.get(loaded.name)
        if traffic is None or traffic.spec is not loaded.spec:
            traffic = self._traffic[loaded.name] = ModelTraffic.of(loaded.spec)
        answering = traffic.answering(self._registry.get)
        started = self._start(answering, request, done, answered_as=loaded.name)
        traffic.copy(
            request, started.future, answering, self._registry.get, self.max_tensor_elements
        )
        return started

    def traffic(self) -> list[ModelTraffic]:
        """The split and shadow counters of every model that has had traffic shared
        out, for the metrics."""
        return list(self._traffic.values())

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
            outputs = declared_outputs(
                loaded, result.outputs, names=started.names, requested=request.outputs
            )
        except ModelportError as exc:
            elapsed = time.perf_counter_ns() - started.begun
            loaded.stats.record_request(False, elapsed, 0, exc.kind.value)
            raise
        loaded.stats.record_request(True, time.perf_counter_ns() - started.begun, result.queue_ns)
        name = started.answered_as or loaded.name
        return InferenceResponse(name, str(loaded.version), outputs, request.id, {})

    # -- metadata, repository, statistics -------------------------------------------------

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        """KServe's model metadata: versions, platform, and the signature with the batch
        dimension (-1) in front where the model batches."""
        loaded = self._registry.get(name, version)
        entry = self._registry.entries[loaded.name]
        batch = (-1,) if loaded.spec.batches else ()

        def with_batch(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
            return tuple(t.model_copy(update={"shape": (*batch, *t.shape)}) for t in specs)

        return ModelMetadata(
            name=loaded.name,
            versions=tuple(str(v) for v in sorted(entry.versions)),
            platform=platform_of(loaded.spec),
            inputs=with_batch(loaded.signature.inputs),
            outputs=with_batch(loaded.signature.outputs),
            max_batch_size=loaded.spec.max_batch_size,
        )

    def get_version(self, name: str, version: str = "") -> LoadedVersion:
        """A serving version of ``name`` (its latest by default): its spec, signature,
        labels and counters. ModelNotFound or ModelUnavailable when there is none."""
        return self._registry.get(name, version)

    def version_for_label(self, name: str, label: str) -> str:
        """The version a label of ``version_labels`` in model.yaml names (TF Serving's
        version labels, e.g. ``{stable: 1, canary: 2}``)."""
        loaded = self._registry.get(name)
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
        name = self._registry.resolve(name)
        rows = [r for r in self._registry.index() if r.name == name]
        if not rows:
            raise ModelNotFound(f"unknown model '{name}'")
        if version and rows[0].version:
            rows = [r for r in rows if r.version == version]
            if not rows:
                raise ModelNotFound(f"model '{name}' has no version {version}")
        return rows

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        """Every model of the repository (and every one served through other workers),
        a row per serving version, with its state and the reason it does not serve."""
        rows = self._registry.index()
        return [r for r in rows if r.state == "READY"] if ready_only else rows

    def models(self) -> list[ModelView]:
        """Every model the service has loaded or tried to, by name; reads no files, so
        metrics and heartbeats may call it as often as they like."""
        return [_view(entry) for _, entry in sorted(self._registry.entries.items())]

    def model(self, name: str) -> ModelView:
        """One model of the repository, loaded or not: a model not (yet) loaded has its
        model.yaml read for the spec (None where it cannot be read)."""
        name = self._registry.resolve(name)
        entry = self._registry.entries.get(name)
        spec = entry.spec if entry is not None else None
        if spec is None:
            with contextlib.suppress(ModelportError):
                spec = self._registry.repository.source(name).spec
        if entry is not None:
            return _view(entry, spec)
        if spec is None and name not in self._registry.repository.names():
            raise ModelNotFound(f"unknown model '{name}'")
        return ModelView(
            name=name, state=ModelState.UNAVAILABLE, reason="not loaded", spec=spec, versions=()
        )

    def model_config(self, name: str, version: str = "") -> TritonConfig:
        """The configuration of a serving version in Triton's terms, for the
        model_configuration extension over HTTP and gRPC alike."""
        loaded = self._registry.get(name, version)
        return triton_config(loaded.spec, loaded.signature)

    def samples_folder(self, name: str) -> Path:
        """Where a model's sample inputs are (``<model>/samples/`` in the repository);
        the folder may not exist. ModelNotFound for a model the server does not know."""
        self.model_status(name)
        return self._registry.repository.root / self._registry.resolve(name) / SAMPLES_DIR

    # -- admin ----------------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load or reload a model, in every server process (an admin call: Forbidden
        where admin calls are refused). Its old versions serve until the new ones are
        ready, and keep serving if they fail."""
        self._check_admin()
        name = self._registry.resolve(name)
        await self._registry.load(name)
        if self._peers is not None:
            await self._peers.broadcast("load", name)

    async def unload(self, name: str) -> None:
        """Unload a model in every server process (an admin call, as :meth:`load`); it
        stays unloaded until loaded again, whatever its files do."""
        self._check_admin()
        name = self._registry.resolve(name)
        await self._registry.unload(name)
        if self._peers is not None:
            await self._peers.broadcast("unload", name)

    async def register_region(self, region: RegionStatus) -> None:
        """Triton's system shared memory: map a region in every server process (an admin
        call: it maps a file of the server's user)."""
        self._check_admin()
        self.shared_memory.register(
            region.name, region.key, offset=region.offset, byte_size=region.byte_size
        )
        if self._peers is not None:
            await self._peers.share_region(region)

    async def unregister_region(self, name: str = "") -> None:
        """Forget a region (every region when ``name`` is "") in every process."""
        self._check_admin()
        self.shared_memory.unregister(name)
        if self._peers is not None:
            await self._peers.share_region(RegionStatus(name, "", 0, 0))

    async def load_here(self, name: str, *, raise_errors: bool = True) -> None:
        """Load or reload a model in this process only, with no admin check: what
        another process was asked to do (the peers' socket), a model another worker
        advertises (a cluster gateway), or files that changed (the watchers). With
        ``raise_errors`` False a failed load is logged and listed, not raised (a
        ModelNotFound still is)."""
        await self._registry.load(name, raise_errors=raise_errors)

    async def unload_here(self, name: str) -> None:
        """Unload a model in this process only (see :meth:`load_here`)."""
        await self._registry.unload(name)

    async def forget(self, name: str) -> None:
        """Unload a model that left the repository, here, and drop it from the index."""
        await self._registry.remove(name)

    # -- the repository's folders, for the watchers (core/watcher.py) ---------------------

    def model_folders(self) -> dict[str, Path]:
        """Each model's folder in the repository, by name."""
        repository = self._registry.repository
        return {name: repository.root / name for name in repository.names()}

    def follows_its_files(self, name: str) -> bool:
        """Whether a change of ``name``'s files should load it again: not when it was
        unloaded through the API (it stays unloaded), nor while evicted by the memory
        limits (it reads its new files when it loads on demand)."""
        entry = self._registry.entries.get(name)
        return entry is None or not (entry.unloaded or entry.standby)

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
                for e in self._registry.entries.values()
                for v, lv in sorted(e.versions.items())
            ]
        entry = self._registry.entries.get(self._registry.resolve(name))
        if entry is None:
            raise ModelNotFound(f"unknown model '{name}'")
        name = entry.name
        if version:
            loaded = self._registry.get(name, version)
            return [VersionStats(name, version, loaded.stats)]
        return [VersionStats(name, str(v), lv.stats) for v, lv in sorted(entry.versions.items())]
