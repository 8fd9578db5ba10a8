"""The model registry: which models are loaded, in what state, and why not.

Loading reads the spec, creates ``instances.count`` runtimes per selected version,
resolves the signature, starts a batcher and runs the warm-up; only then is the version
READY. A model that fails to load is UNAVAILABLE with the reason, and nothing else is
touched. Reloading a served model builds the new versions first and swaps them in, so
the old ones keep serving until the new ones are ready (and keep serving if they fail).
Container models (``runtime: container``) are never loaded here: they are listed as
UNAVAILABLE with a reason naming the tasks API, which runs them (``modelport.tasks``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from modelport.core.batcher import DynamicBatcher
from modelport.core.instances import Instance
from modelport.core.repository import ModelRepository, ModelSource
from modelport.core.runtime import ModelCaller, RuntimeContext, RuntimeFactory, Signature
from modelport.core.stats import ModelStats
from modelport.errors import (
    InvalidInput,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    SpecError,
)
from modelport.spec import ModelSpec, TensorSpec, WarmupSpec
from modelport.tensors import numpy_dtype

log = logging.getLogger("modelport.registry")


class ModelState(StrEnum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


TASK_ONLY = (ModelState.UNAVAILABLE, "a container model: it runs as tasks (POST /api/tasks)")


@dataclass(slots=True, eq=False)
class LoadedVersion:
    """One servable version: its resolved signature, batcher, instances and counters."""

    name: str
    version: int
    spec: ModelSpec
    signature: Signature
    labels: tuple[str, ...]
    batcher: DynamicBatcher
    instances: list[Instance]
    stats: ModelStats
    devices: tuple[str, ...]
    inputs_by_name: dict[str, TensorSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs_by_name = {t.name: t for t in self.signature.inputs}


@dataclass(slots=True, eq=False)
class ModelEntry:
    name: str
    state: ModelState
    reason: str = ""
    spec: ModelSpec | None = None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)

    @property
    def latest(self) -> LoadedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


@dataclass(frozen=True, slots=True)
class IndexRow:
    name: str
    version: str
    state: str
    reason: str


class ModelRegistry:
    def __init__(
        self,
        repository: ModelRepository,
        runtimes: Mapping[str, RuntimeFactory],
        caller: ModelCaller,
    ) -> None:
        self.repository = repository
        self.runtimes = runtimes
        self.caller = caller
        self.entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.initial_load_done = False

    # -- lookups (hot path) ---------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model '{name}'; GET /v2/repository/index lists them")
        if not entry.versions:
            why = f": {entry.reason}" if entry.reason else ""
            raise ModelUnavailable(f"model '{name}' is {entry.state.value.lower()}{why}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not version.isdigit():
            raise InvalidInput(f"model version must be a positive integer, got '{version}'")
        loaded = entry.versions.get(int(version))
        if loaded is None:
            served = ", ".join(map(str, sorted(entry.versions)))
            raise ModelNotFound(f"model '{name}' has no version {version} (serving: {served})")
        return loaded

    def index(self) -> list[IndexRow]:
        names = sorted(set(self.repository.names()) | set(self.entries))
        rows: list[IndexRow] = []
        for name in names:
            entry = self.entries.get(name)
            if entry is None:
                rows.append(IndexRow(name, "", "UNAVAILABLE", "not loaded"))
            elif entry.versions:
                state = entry.state.value if entry.state is not ModelState.LOADING else "READY"
                rows += [IndexRow(name, str(v), state, "") for v in sorted(entry.versions)]
            else:
                rows.append(IndexRow(name, "", entry.state.value, entry.reason))
        return rows

    # -- load / unload ----------------------------------------------------------------------

    async def load_all(self) -> None:
        await asyncio.gather(*(self.load(n, raise_errors=False) for n in self.repository.names()))
        self.initial_load_done = True

    async def load(self, name: str, raise_errors: bool = True) -> ModelEntry:
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.entries.get(name)
            if entry is None:
                entry = self.entries[name] = ModelEntry(name, ModelState.LOADING)
            elif not entry.versions:
                entry.state, entry.reason = ModelState.LOADING, ""
            try:
                source = await asyncio.to_thread(self.repository.source, name)
                if source.spec.runs_as_tasks:
                    # Container models never serve online: they are listed, unavailable,
                    # with the reason pointing at the tasks API that runs them.
                    entry.spec, entry.state, entry.reason = source.spec, *TASK_ONLY
                    return entry
                versions = await self._load_versions(source)
            except ModelportError as exc:
                if isinstance(exc, ModelNotFound) and not entry.versions:
                    del self.entries[name]
                    raise
                log.warning("model %s failed to load: %s", name, exc.message)
                if not entry.versions:
                    entry.state, entry.reason = ModelState.UNAVAILABLE, exc.message
                if raise_errors:
                    raise
                return entry
            old = entry.versions
            entry.spec, entry.versions = source.spec, versions
            entry.state, entry.reason = ModelState.READY, ""
            for loaded in old.values():
                await self._close_version(loaded)
            log.info("model %s ready, versions %s", name, sorted(versions))
            return entry

    async def unload(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None:
            if name in self.repository.names():
                return
            raise ModelNotFound(f"unknown model '{name}'")
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry.state = ModelState.UNLOADING
            versions, entry.versions = entry.versions, {}
            for loaded in versions.values():
                await self._close_version(loaded)
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"

    async def close(self) -> None:
        for name in list(self.entries):
            await self.unload(name)

    # -- internals ------------------------------------------------------------------------

    async def _load_versions(self, source: ModelSource) -> dict[int, LoadedVersion]:
        loaded: dict[int, LoadedVersion] = {}
        try:
            for version in source.versions:
                loaded[version] = await self._load_version(source, version)
        except BaseException:
            for done in loaded.values():
                await self._close_version(done)
            raise
        return loaded

    async def _load_version(self, source: ModelSource, version: int) -> LoadedVersion:
        spec = source.spec
        factory = self.runtimes.get(spec.runtime)
        if factory is None:
            raise SpecError(
                f"{source.path / 'model.yaml'}: field 'runtime': unknown runtime "
                f"'{spec.runtime}'; expected one of {', '.join(sorted(self.runtimes))}"
            )
        devices = _devices(spec)
        instances: list[Instance] = []
        try:
            for i, device in enumerate(devices):
                ctx = RuntimeContext(
                    spec, version, source.path, source.path / str(version), i, device,
                    self.caller,
                )  # fmt: skip
                runtime = factory(ctx)
                try:
                    await asyncio.to_thread(runtime.load)
                except ModelportError:
                    raise
                except Exception as exc:
                    raise SpecError(
                        f"{ctx.version_dir}: the {spec.runtime} runtime could not load it: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                instances.append(Instance(runtime, f"{spec.name}-v{version}-{i}"))
            signature = _resolve_signature(source, instances[0].runtime.signature())
            stats = ModelStats()
            batcher = DynamicBatcher(
                f"{spec.name}", instances, spec.max_batch_size, spec.batching, stats
            )
            batcher.start()
            loaded = LoadedVersion(
                spec.name, version, spec, signature, _labels(source), batcher, instances,
                stats, tuple(devices),
            )  # fmt: skip
        except BaseException:
            for inst in instances:
                await asyncio.to_thread(inst.close)
            raise
        try:
            await _warm_up(loaded)
        except BaseException:
            await self._close_version(loaded)
            raise
        return loaded

    async def _close_version(self, loaded: LoadedVersion) -> None:
        await loaded.batcher.close()
        for inst in loaded.instances:
            await asyncio.to_thread(inst.close)


def _devices(spec: ModelSpec) -> list[str]:
    count = spec.instances.count
    if spec.instances.device == "cpu":
        return ["cpu"] * count
    gpus = spec.instances.gpus or (0,)
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(count)]


def _resolve_signature(source: ModelSource, found: Signature) -> Signature:
    spec, where = source.spec, source.path / "model.yaml"
    for field_name, declared, actual in (
        ("inputs", spec.inputs, found.inputs),
        ("outputs", spec.outputs, found.outputs),
    ):
        if declared and actual:
            known = {t.name for t in actual}
            missing = [t.name for t in declared if t.name not in known]
            if missing:
                raise SpecError(
                    f"{where}: field '{field_name}': {missing} not in the model file, "
                    f"which has {sorted(known)}"
                )
    inputs = spec.inputs or found.inputs
    outputs = spec.outputs or found.outputs
    if not inputs:
        raise SpecError(
            f"{where}: field 'inputs': the {spec.runtime} runtime cannot tell its inputs; "
            "declare them (name, datatype, shape)"
        )
    return Signature(tuple(inputs), tuple(outputs))


def _labels(source: ModelSource) -> tuple[str, ...]:
    labels = source.spec.labels
    if isinstance(labels, str):
        path = source.path / labels
        try:
            return tuple(ln.strip() for ln in path.read_text().splitlines() if ln.strip())
        except OSError as exc:
            raise SpecError(f"{source.path / 'model.yaml'}: field 'labels': {exc}") from None
    return labels


def warmup_inputs(
    signature: Signature, spec: ModelSpec, sample: WarmupSpec, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Build one warm-up request from a ``warmup`` entry of model.yaml."""
    inputs: dict[str, np.ndarray] = {}
    for tensor in signature.inputs:
        shape = tuple(1 if d == -1 else d for d in tensor.shape)
        if spec.batches:
            shape = (sample.batch_size, *shape)
        how: Any = sample.inputs.get(tensor.name, "zeros")
        dtype = numpy_dtype(tensor.datatype)
        if tensor.datatype == "BYTES":
            inputs[tensor.name] = np.full(shape, b"", dtype=np.object_)
        elif how == "zeros":
            inputs[tensor.name] = np.zeros(shape, dtype)
        elif how == "random":
            inputs[tensor.name] = rng.random(shape).astype(dtype)
        else:
            inputs[tensor.name] = np.asarray(how, dtype=dtype).reshape(shape)
    return inputs


async def _warm_up(loaded: LoadedVersion) -> None:
    if not loaded.spec.warmup:
        return
    start = time.perf_counter_ns()
    rng = np.random.default_rng(0)
    try:
        for sample in loaded.spec.warmup:
            inputs = warmup_inputs(loaded.signature, loaded.spec, sample, rng)
            for _ in range(sample.count):
                for inst in loaded.instances:
                    await asyncio.to_thread(inst.run_blocking, inputs, {})
    except Exception as exc:
        raise SpecError(
            f"model '{loaded.name}' version {loaded.version}: warm-up failed: "
            f"{type(exc).__name__}: {exc}; check the 'warmup' field of its model.yaml"
        ) from exc
    loaded.stats.warmup_ns = time.perf_counter_ns() - start
    log.info(
        "model %s v%d warmed up in %.1f ms", loaded.name, loaded.version,
        loaded.stats.warmup_ns / 1e6,
    )  # fmt: skip
