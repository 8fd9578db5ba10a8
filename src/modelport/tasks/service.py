"""The tasks core: submit, look up, list, cancel, fetch output and logs, recover, purge.

The HTTP routes (``api/http/tasks.py``), the zip-task cluster compat routes and the CLI
go through this class only. Store and blob calls block, so they run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from modelport.core.repository import ModelRepository
from modelport.errors import Conflict, InvalidInput, ModelNotFound
from modelport.numbers import natural, shown
from modelport.tasks.archives import CHUNK, ZipLimits, verify_zip
from modelport.tasks.blobs import BlobStore, TaskBlob
from modelport.tasks.broker import Broker
from modelport.tasks.container_models import (
    ContainerModel,
    NewContainerModel,
    PostedContainer,
    container_models,
    find_container_model,
    new_uid,
    task_source,
    write_container_model,
)
from modelport.tasks.records import TaskPage, TaskRecord, TaskStatus, now
from modelport.tasks.spool import Spool
from modelport.tasks.store import TaskStore
from modelport.tasks.upkeep import ADOPT_S, RECONCILE_S, TaskUpkeep
from modelport.tasks.worker import TaskWorker

log = logging.getLogger("modelport.tasks")

LOG_POLL_S = 0.25
MAX_OFFSET = 2**62  # past it, databases' 64-bit integers overflow
MAX_PAGE = 500
_FILE_NAME = re.compile(r"^[^/\\\x00]{1,255}$")
# A W3C traceparent (version 00): what a task keeps of the trace it was submitted in.
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class TaskNotFound(ModelNotFound):
    """An unknown task id (NOT_FOUND, as an unknown model)."""


@dataclass(frozen=True, slots=True)
class Upload:
    """A file the client sent, already saved to ``path`` by the transport."""

    filename: str
    path: Path


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """Limits and lifetimes of tasks; ``posted_container``: how the containers of models
    clients post run."""

    zip_limits: ZipLimits = field(default_factory=ZipLimits)
    max_attempts: int = 3
    retention: timedelta | None = timedelta(days=7)
    posted_container: PostedContainer = field(default_factory=PostedContainer)


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """A succeeded task's output zip, already open: ``size`` bytes, read by ``chunks``.

    Opened before an adapter answers, so the retention sweep deleting the file meanwhile
    still gives the whole file (an open file stays readable), never a cut answer."""

    size: int
    chunks: AsyncIterator[bytes]


class TaskService:
    """The tasks core: what the tasks API, the zip-task cluster compat API and the CLI's
    server calls go through. It accepts tasks (their files checked, stored and queued),
    looks them up, lists, cancels and deletes them, opens their output and logs, adds
    container models, and runs the upkeep (recovery, reconciling, purging old files)."""

    def __init__(
        self,
        *,
        store: TaskStore,
        blobs: BlobStore,
        broker: Broker,
        repository: ModelRepository,
        policy: TaskPolicy,
        spool: Spool,
        worker: TaskWorker | None = None,
        remote_versions: Callable[[str], set[int]] | None = None,
        primary: bool = True,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        """``spool``: scratch space for uploads on their way in. ``remote_versions``
        (with a shared broker) gives the versions of a container model that workers on
        other hosts run, for models this repository lacks. With several server processes,
        only the ``primary`` one recovers and purges, and it adopts the tasks the others
        stored (``known``: what its broker has)."""
        self.store, self.blobs, self.broker = store, blobs, broker
        self.repository, self.policy, self.worker = repository, policy, worker
        self.spool = spool
        self.remote_versions = remote_versions
        self.upkeep = TaskUpkeep(
            store=store,
            blobs=blobs,
            broker=broker,
            worker=worker,
            max_attempts=policy.max_attempts,
            retention=policy.retention,
            shared=remote_versions is not None,
            known=known,
        )
        self.primary = primary
        self._purging: asyncio.Task[None] | None = None
        self._reconciling: asyncio.Task[None] | None = None

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a stopped server left, start the worker and the purge of old files."""
        if self.primary:
            await self.upkeep.recover()
        if self.worker is not None:
            await self.worker.start()
        if self.policy.retention is not None and self.primary:
            every = min(600.0, max(1.0, self.policy.retention.total_seconds() / 10))
            self._purging = asyncio.create_task(self.upkeep.purge_forever(every), name="task-purge")
        if self.remote_versions is not None or self.upkeep.known is not None:
            every = RECONCILE_S if self.upkeep.known is None else ADOPT_S
            self._reconciling = asyncio.create_task(
                self.upkeep.reconcile_forever(every), name="reconcile"
            )

    async def close(self) -> None:
        for loop in (self._purging, self._reconciling):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        if self.worker is not None:
            await self.worker.stop()
        await self.broker.close()
        await asyncio.to_thread(self.store.close)
        await asyncio.to_thread(self.spool.close)

    # -- health ---------------------------------------------------------------------------

    async def ping_store(self) -> None:
        """Return once the task store has answered; raise what reaching it raised."""
        await asyncio.to_thread(self.store.ping)

    async def ping_broker(self) -> None:
        """Return once the broker has answered (the in-process one always has)."""
        await self.broker.ping()

    # -- submit -----------------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        files: list[Upload],
        *,
        parameters: dict[str, Any] | None = None,
        version: str = "",
        accept_empty_output: bool = False,
        zip_only: bool = False,
        traceparent: str = "",
    ) -> TaskRecord:
        """Accept a task: check the model and the files, store them, queue the task. A zip
        is read through here, so one the worker could not unpack is refused now (400).
        ``accept_empty_output``: an empty ``/output`` succeeds with an empty zip instead
        of failing the task (what the zip-task cluster server's clients expect);
        ``zip_only``: the one file must be a zip, whatever its name; ``traceparent``: the
        W3C trace context it was submitted in (kept when well formed, else dropped)."""
        chosen = await asyncio.to_thread(self._container_version, model, version)
        if not files:
            raise InvalidInput("a task needs at least one input file (a zip, or files)")
        with self.spool.scratch() as scratch:
            packed = await asyncio.to_thread(self._input_zip, files, scratch, zip_only)
            return await self.submit_packed(
                model=model,
                version=chosen,
                packed=packed,
                parameters=parameters,
                accept_empty_output=accept_empty_output,
                traceparent=traceparent,
            )

    async def submit_packed(
        self,
        *,
        model: str,
        version: int,
        packed: Path,
        parameters: dict[str, Any] | None = None,
        accept_empty_output: bool = False,
        traceparent: str = "",
    ) -> TaskRecord:
        """Store and queue a task whose input zip (``packed``) the caller has made and
        whose model it has checked (an ABLInfer session names its spec in
        ``parameters``)."""
        task_id = uuid.uuid4().hex
        size = packed.stat().st_size
        await asyncio.to_thread(self.blobs.put_file, TaskBlob.INPUT.key(task_id), packed)
        record = TaskRecord(
            id=task_id,
            model=model,
            version=version,
            status=TaskStatus.QUEUED,
            created_at=now(),
            parameters=dict(parameters or {}),
            input_bytes=size,
            accept_empty_output=accept_empty_output,
            traceparent=traceparent if TRACEPARENT.fullmatch(traceparent) else "",
        )
        await asyncio.to_thread(self.store.create, record)
        try:
            await self.broker.enqueue(task_id, model)
        except Exception as exc:
            if self.remote_versions is None:
                raise
            # The record is stored: the reconciler queues it once the broker is back.
            log.warning("task %s stored but not queued yet (broker: %s)", task_id, exc)
        log.info("task %s queued for %s v%d", task_id, model, version)
        return record

    def _container_version(self, model: str, version: str) -> int:
        if self.remote_versions is not None and model not in self.repository.names():
            hosted = self.remote_versions(model)
            if hosted:
                return _pick_version(model, version, hosted)
        source = task_source(self.repository, model)
        if not source.spec.runs_as_tasks:
            raise InvalidInput(
                f"model '{model}' is not a container model (runtime: {source.spec.runtime}); "
                f"run it online with POST /v2/models/{model}/infer"
            )
        return _pick_version(model, version, set(source.versions))

    def _input_zip(self, files: list[Upload], scratch: Path, zip_only: bool) -> Path:
        if zip_only and len(files) != 1:
            raise InvalidInput("a task needs exactly one zip file")
        if len(files) == 1 and (
            zip_only
            or files[0].filename.lower().endswith(".zip")
            or zipfile.is_zipfile(files[0].path)
        ):
            verify_zip(files[0].path, self.policy.zip_limits)
            return files[0].path
        names = [Path(f.filename.replace("\\", "/")).name for f in files]
        for name in names:
            if not _FILE_NAME.match(name) or name in (".", ".."):
                raise InvalidInput(f"bad file name {name!r}")
        if len(set(names)) != len(names):
            raise InvalidInput("two input files have the same name")
        packed = TaskBlob.INPUT.beside(scratch)
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, upload in zip(names, files, strict=True):
                archive.write(upload.path, name)
        return packed

    # -- look up ----------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord:
        record = await asyncio.to_thread(self.store.get, task_id)
        if record is None:
            raise TaskNotFound(f"unknown task '{task_id}'")
        return record

    async def list_tasks(
        self,
        model: str | None = None,
        *,
        statuses: Collection[TaskStatus] = (),
        limit: int = 50,
        offset: int = 0,
    ) -> TaskPage:
        if not 1 <= limit <= MAX_PAGE or not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(f"limit is 1..{MAX_PAGE} and offset 0..{MAX_OFFSET}")
        return await asyncio.to_thread(
            self.store.page, model, statuses=statuses, limit=limit, offset=offset
        )

    # -- cancel, delete ----------------------------------------------------------------------

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued or running task (a running container is stopped)."""
        done = await asyncio.to_thread(
            self.store.transition,
            task_id,
            [TaskStatus.QUEUED, TaskStatus.RUNNING],
            status=TaskStatus.CANCELLED,
            finished_at=now(),
            error="cancelled by a client",
        )
        if done is not None:
            log.info("task %s cancelled", task_id)
            return done
        record = await self.get(task_id)
        raise Conflict(f"task '{task_id}' has already {record.status.value}")

    async def delete(self, task_id: str) -> None:
        """Cancel the task if it is not finished, then remove its record and files."""
        record = await self.get(task_id)
        if not record.status.finished:
            with contextlib.suppress(Conflict):  # it finished meanwhile
                await self.cancel(task_id)
            await self._wait_stopped(task_id)
        await asyncio.to_thread(self.blobs.delete_prefix, task_id)
        await asyncio.to_thread(self.store.delete, task_id)

    async def _wait_stopped(self, task_id: str, timeout_s: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.worker is not None and task_id in self.worker.running:
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.1)

    # -- output and logs --------------------------------------------------------------------

    async def open_output(self, task_id: str) -> TaskOutput:
        """A succeeded task's output zip, opened; Conflict when the task has none (not
        succeeded, or its files were removed after the retention time)."""
        record = await self.get(task_id)
        if record.status is not TaskStatus.SUCCEEDED:
            why = f": {record.error.splitlines()[0]}" if record.error else ""
            raise Conflict(f"task '{task_id}' is {record.status.value}{why}; no output")
        gone = Conflict(f"task '{task_id}': its output was removed after the retention time")
        if record.files_purged:
            raise gone
        try:
            handle = await asyncio.to_thread(self.blobs.open, TaskBlob.OUTPUT.key(task_id))
        except FileNotFoundError:
            raise gone from None
        size = await asyncio.to_thread(handle.seek, 0, os.SEEK_END)
        await asyncio.to_thread(handle.seek, 0)
        return TaskOutput(size, _chunks(handle))

    async def logs(self, task_id: str, follow: bool = True) -> AsyncIterator[bytes]:
        """The task's container log: what there is, then (``follow``) more as it comes,
        until the task ends."""
        await self.get(task_id)
        offset = 0
        while True:
            record = await self.get(task_id)
            # A cancelled task is finished before its worker has stopped it and saved its
            # log: the live log is read until then.
            here = self.worker is not None and task_id in self.worker.running
            if record.status.finished and not here:
                key = TaskBlob.LOGS.key(task_id)
                if await asyncio.to_thread(self.blobs.exists, key):
                    for chunk in await asyncio.to_thread(_read_from, self.blobs, key, offset):
                        yield chunk
                return
            live = self.worker.live_log(task_id) if self.worker is not None else None
            if live is not None:
                data = await asyncio.to_thread(_read_file_from, live, offset)
                if data:
                    offset += len(data)
                    yield data
            if not follow:
                return
            await asyncio.sleep(LOG_POLL_S)

    # -- container models ----------------------------------------------------------------------

    async def container_models(self) -> list[ContainerModel]:
        """The repository's container models."""
        return await asyncio.to_thread(container_models, self.repository)

    async def container_model(self, name: str) -> ContainerModel:
        """The container model clients call ``name`` (ModelNotFound when there is none);
        tasks are submitted to its ``folder``."""
        return await asyncio.to_thread(find_container_model, self.repository, name)

    async def add_container_model(
        self, model: ContainerModel, *, static_files: Path | None = None
    ) -> ContainerModel:
        """Write a new container model into the repository (version 1 holds
        ``static_files``, a zip, unpacked), its container run as ``posted_container``
        says; it gets a new uid. Refuses a name that is taken."""
        model = replace(model, uid=new_uid())
        new = NewContainerModel(
            model=model, static_files=static_files, container=self.policy.posted_container
        )
        await asyncio.to_thread(
            write_container_model, self.repository, new, limits=self.policy.zip_limits
        )
        log.info("container model %s added (%s)", model.folder, model.image)
        return model


def _pick_version(model: str, version: str, versions: set[int]) -> int:
    if not version:
        return max(versions)
    number = natural(version)
    if number is None or number not in versions:
        raise ModelNotFound(f"model '{model}' has no version {shown(version)}")
    return number


async def _chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    with handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


def _read_from(blobs: BlobStore, key: str, offset: int) -> list[bytes]:
    return list(blobs.read_chunks(key, offset))


def _read_file_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(1024 * 1024)
    except OSError:
        return b""
