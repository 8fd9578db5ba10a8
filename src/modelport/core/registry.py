"""The model registry: which models are loaded, in what state, and why not.

Loading reads the spec, creates ``instances.count`` runtimes per selected version,
resolves the signature, starts a batcher and runs the warm-up; only then is the version
READY. A model that fails to load is UNAVAILABLE with the reason, and nothing else is
touched. Reloading a served model builds the new versions first and swaps them in, so
the old ones keep serving until the new ones are ready (and keep serving if they fail).
Container models (``runtime: container``) are never loaded here: they are listed as
UNAVAILABLE with a reason naming the tasks API, which runs them (``modelport.tasks``).
With :class:`~modelport.core.cache.MemoryLimits`, loading first unloads the least
recently used idle models to stay under the caps; those load again on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Collection, Mapping

from modelport.core.batcher import Batcher, DynamicBatcher
from modelport.core.cache import (
    EVICTED_REASON,
    MemoryLimits,
    OnDemandBatcher,
    Resident,
    files_size,
    make_room,
)
from modelport.core.entries import (
    TASK_ONLY,
    IndexRow,
    LoadedVersion,
    ModelEntry,
    ModelState,
)
from modelport.core.instances import NO_GPUS, Gpus, Instance, devices_for
from modelport.core.repository import ModelRepository, ModelSource
from modelport.core.reshape import reshaping
from modelport.core.runtime import (
    ModelCaller,
    RuntimeContext,
    RuntimeFactory,
    resolve_signature,
)
from modelport.core.stats import ModelStats
from modelport.core.tracing import Tracer
from modelport.core.warmup import warm_up
from modelport.errors import (
    InvalidInput,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    SpecError,
)
from modelport.numbers import natural, shown

log = logging.getLogger("modelport.registry")


class ModelRegistry:
    """Which models are loaded, in what state, and why not (see the module docstring).

    The :class:`~modelport.core.service.InferenceService` owns one and is the only
    caller: adapters ask the service. ``runtimes`` makes a runtime by the name in
    model.yaml; ``caller`` is given to runtimes to call other models; ``limits`` caps
    what stays loaded; ``gpus`` are where GPU instances may be placed.
    """

    def __init__(
        self,
        repository: ModelRepository,
        runtimes: Mapping[str, RuntimeFactory],
        *,
        caller: ModelCaller,
        limits: MemoryLimits | None = None,
        gpus: Gpus = NO_GPUS,
        tracer: Tracer | None = None,
    ) -> None:
        self.repository = repository
        self.tracer = tracer  # given to batchers and runtimes (core/tracing.py)
        self.runtimes = runtimes
        self.caller = caller
        self.limits = limits or MemoryLimits()
        self.gpus = gpus  # where instances with device gpu or auto may be placed
        self.entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._room = asyncio.Lock()  # under caps, one load at a time makes room for itself
        self._reloads: dict[str, asyncio.Task[ModelEntry]] = {}
        self._uses = 0
        self.initial_load_done = False
        # Names given in model.yaml's ``aliases``, each to its model; and the models that
        # claim a name another model claims too, with the reason (neither serves).
        self._aliases: dict[str, str] = {}
        self._clashes: dict[str, str] = {}

    # -- lookups (hot path) ---------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The model a name stands for: the model of that name, else the one that has it
        among its ``aliases`` (else the name, unknown as it is)."""
        if name in self.entries:
            return name
        return self._aliases.get(name, name)

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """A serving version (the latest by default; an evicted model's stand-in loads it
        again on its first request). ``name`` may be an alias."""
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries.get(self._aliases.get(name, ""))
            if entry is None:
                raise ModelNotFound(f"unknown model '{name}'; GET /v2/repository/index lists them")
        clash = self._clashes.get(entry.name)
        if clash:
            raise ModelUnavailable(f"model '{entry.name}' is unavailable: {clash}")
        versions = entry.versions or entry.standby
        if not versions:
            why = f": {entry.reason}" if entry.reason else ""
            raise ModelUnavailable(f"model '{name}' is {entry.state.value.lower()}{why}")
        self._uses += 1
        entry.last_used = self._uses
        if not version:
            return versions[max(versions)]
        number = natural(version)
        if number is None:
            raise InvalidInput(f"model version must be a positive integer, got {shown(version)}")
        loaded = versions.get(number)
        if loaded is None:
            served = ", ".join(map(str, sorted(versions)))
            raise ModelNotFound(f"model '{name}' has no version {version} (serving: {served})")
        return loaded

    def index(self) -> list[IndexRow]:
        """Every model of the repository or the registry, a row per serving version."""
        names = sorted(set(self.repository.names()) | set(self.entries))
        rows: list[IndexRow] = []
        for name in names:
            entry = self.entries.get(name)
            if entry is None:
                rows.append(
                    IndexRow(name=name, version="", state="UNAVAILABLE", reason="not loaded")
                )
            elif entry.versions and name not in self._clashes:
                state = entry.state.value if entry.state is not ModelState.LOADING else "READY"
                rows += [
                    IndexRow(name=name, version=str(v), state=state, reason="")
                    for v in sorted(entry.versions)
                ]
            else:
                rows.append(
                    IndexRow(name=name, version="", state=entry.state.value, reason=entry.reason)
                )
        return rows

    # -- load / unload ----------------------------------------------------------------------

    async def load_all(self, names: Collection[str] | None = None) -> None:
        """Load every model of the repository (or those of ``names`` it has) at once; one
        failing fails only itself."""
        known = self.repository.names()
        chosen = known if names is None else [n for n in known if n in names]
        await asyncio.gather(*(self.load(n, raise_errors=False) for n in chosen))
        self.initial_load_done = True

    async def load(self, name: str, raise_errors: bool = True) -> ModelEntry:
        """Load or reload a model (see the module docstring); with ``raise_errors``
        False a failure is listed and logged, and only a ModelNotFound is raised."""
        room = self._room if self.limits.capped else contextlib.nullcontext()
        async with room, self._locks.setdefault(name, asyncio.Lock()):
            return await self._load_locked(name, raise_errors)

    async def _load_locked(self, name: str, raise_errors: bool) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = ModelEntry(name=name, state=ModelState.LOADING)
        elif not entry.versions and not entry.standby:
            # (An evicted model loading on demand stays listed as evicted until it is
            # READY: the server as a whole stays ready meanwhile.)
            entry.state, entry.reason = ModelState.LOADING, ""
        try:
            source = await asyncio.to_thread(self.repository.source, name)
            if source.spec.runs_as_tasks:
                # Container models never serve online: they are listed, unavailable,
                # with the reason pointing at the tasks API that runs them.
                entry.spec, entry.state, entry.reason = source.spec, *TASK_ONLY
                return entry
            size = 0
            if self.limits.capped:
                size = await asyncio.to_thread(files_size, source.path, source.versions)
                await self._make_room(name, size)
            versions = await self._load_versions(source)
        except ModelportError as exc:
            if isinstance(exc, ModelNotFound) and not entry.versions:
                del self.entries[name]
                raise
            log.warning("model %s failed to load: %s", name, exc.message)
            if not entry.versions:
                entry.state, entry.reason = ModelState.UNAVAILABLE, exc.message
                entry.standby = {}  # the reason is the answer now, not a load on demand
            if raise_errors:
                raise
            return entry
        old = entry.versions
        entry.spec, entry.versions, entry.standby = source.spec, versions, {}
        entry.state, entry.reason, entry.unloaded = ModelState.READY, "", False
        self._uses += 1
        entry.last_used, entry.size = self._uses, size
        for loaded in old.values():
            await self._close_version(loaded)
        log.info("model %s ready, versions %s", name, sorted(versions))
        self._claim_names()
        return entry

    async def unload(self, name: str) -> None:
        """Unload a model's versions; it stays listed, UNAVAILABLE ("unloaded")."""
        entry = self.entries.get(name)
        if entry is None:
            if name in self.repository.names():
                return
            raise ModelNotFound(f"unknown model '{name}'")
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry.state, entry.unloaded = ModelState.UNLOADING, True
            versions, entry.versions = entry.versions, {}
            standby, entry.standby = entry.standby, {}
            for loaded in (*versions.values(), *standby.values()):
                await self._close_version(loaded)
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"

    async def remove(self, name: str) -> None:
        """Unload a model whose folder left the repository, and forget it."""
        if name in self.entries:
            await self.unload(name)
            self.entries.pop(name, None)
            self._claim_names()

    async def close(self) -> None:
        """Unload every model."""
        for name in list(self.entries):
            await self.unload(name)

    def _claim_names(self) -> None:
        """Map each alias to its model, and mark the models that claim one name
        together (alias and alias, or alias and a model's own name) UNAVAILABLE, with a
        reason naming both; a model whose clash went away serves again."""
        claims: dict[str, set[str]] = {}
        for entry in self.entries.values():
            claims.setdefault(entry.name, set()).add(entry.name)
            for alias in entry.spec.aliases if entry.spec is not None else ():
                claims.setdefault(alias, set()).add(entry.name)
        clashes: dict[str, str] = {}
        for claimed, models in sorted(claims.items()):
            if len(models) > 1:
                both = " and ".join(f"'{m}'" for m in sorted(models))
                for model in models:
                    clashes.setdefault(
                        model,
                        f"the name '{claimed}' is claimed by models {both} (a model's name or "
                        "its aliases in model.yaml); give each name to one model",
                    )
        # A contested alias still leads to a model, which answers with the clash.
        self._aliases = {
            alias: min(models) for alias, models in claims.items() if alias not in self.entries
        }
        for name in self._clashes.keys() - clashes.keys():
            freed = self.entries.get(name)
            if freed is not None and freed.versions:
                freed.state, freed.reason = ModelState.READY, ""
        for name, reason in clashes.items():
            self.entries[name].state = ModelState.UNAVAILABLE
            self.entries[name].reason = reason
        self._clashes = clashes

    # -- memory limits --------------------------------------------------------------------

    async def load_evicted(self, name: str) -> None:
        """Load a model evicted by the memory limits again, for requests that wait for it
        (at most ``load_timeout_s``); one load however many requests wait."""
        entry = self.entries.get(name)
        if entry is None:
            return
        entry.waiters += 1  # a model that requests wait for is never evicted
        try:
            async with asyncio.timeout(self.limits.load_timeout_s):
                while entry.standby and self.entries.get(name) is entry:
                    task = self._reloads.get(name)
                    if task is None or task.done():
                        task = asyncio.create_task(self.load(name, raise_errors=False))
                        self._reloads[name] = task
                        task.add_done_callback(self._reload_done)
                    await asyncio.shield(task)
        except TimeoutError:
            raise ModelUnavailable(
                f"model '{name}' was unloaded to stay under the memory limits and did not "
                f"load again within {self.limits.load_timeout_s:g} s (load_timeout_seconds)"
            ) from None
        finally:
            entry.waiters -= 1

    def _reload_done(self, task: asyncio.Task[ModelEntry]) -> None:
        for name, running in list(self._reloads.items()):
            if running is task:
                del self._reloads[name]
        if not task.cancelled():
            task.exception()  # the waiting requests got it; nobody else needs it

    async def _batcher_after_load(self, name: str, version: int) -> Batcher:
        await self.load_evicted(name)
        return self.get(name, str(version)).batcher

    def _busy(self, entry: ModelEntry) -> bool:
        return entry.waiters > 0 or any(
            v.batcher.queue_depth or v.batcher.busy for v in entry.versions.values()
        )

    async def _make_room(self, name: str, size: int) -> None:
        limits = self.limits
        if limits.max_bytes and size > limits.max_bytes:
            raise ModelUnavailable(
                f"model '{name}' needs {size} bytes on disk, more than max_loaded_bytes "
                f"({limits.max_bytes}) allows"
            )
        deadline = asyncio.get_running_loop().time() + limits.load_timeout_s
        while True:
            resident = [
                Resident(e.name, e.last_used, e.size, not self._busy(e))
                for e in self.entries.values()
                if e.versions and e.name != name and not self._locks[e.name].locked()
            ]
            room = make_room(resident, size, limits)
            for victim in room.evict:
                await self._evict(self.entries[victim], room.setting)
            if room.fits:
                return
            if asyncio.get_running_loop().time() > deadline:
                log.warning("loading model %s passes the memory limits: the others are busy", name)
                return
            await asyncio.sleep(0.01)  # every loaded model is mid-request: wait for one

    async def _evict(self, entry: ModelEntry, setting: str) -> None:
        async with self._locks[entry.name]:
            if not entry.versions or self._busy(entry):
                return
            versions, entry.versions = entry.versions, {}
            entry.standby = {v: self._stand_in(lv) for v, lv in versions.items()}
            entry.state = ModelState.UNAVAILABLE
            entry.reason = EVICTED_REASON.format(setting=setting)
            for loaded in versions.values():
                await self._close_version(loaded)
            log.info("model %s unloaded to stay under %s", entry.name, setting)

    def _stand_in(self, loaded: LoadedVersion) -> LoadedVersion:
        async def load() -> Batcher:
            return await self._batcher_after_load(loaded.name, loaded.version)

        return dataclasses.replace(loaded, batcher=OnDemandBatcher(loaded.name, load), instances=[])

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
                f"{source.spec_file}: field 'runtime': unknown runtime "
                f"'{spec.runtime}'; expected one of {', '.join(sorted(self.runtimes))}"
            )
        devices = devices_for(spec, self.gpus)
        instances: list[Instance] = []
        try:
            for i, device in enumerate(devices):
                ctx = RuntimeContext(
                    spec=spec,
                    version=version,
                    model_dir=source.path,
                    version_dir=source.path / str(version),
                    instance=i,
                    device=device,
                    models=self.caller,
                    tracer=self.tracer,
                )
                runtime = reshaping(factory(ctx), spec)
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
            signature = resolve_signature(
                source.spec, source.spec_file, instances[0].runtime.signature()
            )
            stats = ModelStats()
            batcher = DynamicBatcher(
                spec.name,
                instances,
                max_batch_size=spec.max_batch_size,
                batching=spec.batching,
                stats=stats,
                tracer=self.tracer,
            )
            batcher.start()
            loaded = LoadedVersion(
                name=spec.name,
                version=version,
                spec=spec,
                signature=signature,
                labels=_labels(source, source.spec.labels, "labels"),
                output_labels={
                    t.name: _labels(source, t.labels, f"outputs.{t.name}.labels")
                    for t in source.spec.outputs
                    if t.labels
                },
                batcher=batcher,
                instances=instances,
                stats=stats,
                devices=tuple(devices),
            )
        except BaseException:
            for inst in instances:
                await asyncio.to_thread(inst.close)
            raise
        try:
            await warm_up(
                spec,
                version,
                signature=signature,
                instances=instances,
                stats=loaded.stats,
                folder=source.path,
            )
        except BaseException:
            await self._close_version(loaded)
            raise
        return loaded

    async def _close_version(self, loaded: LoadedVersion) -> None:
        await loaded.batcher.close()
        for inst in loaded.instances:
            await asyncio.to_thread(inst.close)


def _labels(source: ModelSource, labels: tuple[str, ...] | str, field: str) -> tuple[str, ...]:
    """Labels given as a list, or read from a file in the model's folder (one a line)."""
    if isinstance(labels, str):
        path = source.path / labels
        try:
            return tuple(ln.strip() for ln in path.read_text().splitlines() if ln.strip())
        except OSError as exc:
            raise SpecError(f"{source.path}: field '{field}': {exc}") from None
    return labels
