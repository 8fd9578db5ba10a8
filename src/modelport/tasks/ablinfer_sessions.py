"""ABLInfer's InferServer sessions over modelport's tasks: what the ``ablinfer`` listener
(``api/http/compat/ablinfer.py``) calls.

A session is created from a spec of the spec folder and the client's choices; its
inputs are uploaded one by one (streamed to disk, sha256, sniffed, converted when they
can be); when the last one arrives its run is queued as a task (:mod:`ablinfer_runs`),
so slots, retries, timeouts, ``kill -9`` recovery and the Tasks view hold for it as for
any task. Sessions and their files survive a restart; a session with no request for
``ttl_s`` is removed with its files and task, never while its run is queued or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from modelport.errors import Conflict, InvalidInput, ModelNotFound, SpecError, TooLarge
from modelport.spec.ablinfer import Document
from modelport.spec.ablinfer_session import (
    VOLUME_TYPES,
    convertible,
    filetype_check,
    plan_session,
    sniff_filetype,
)
from modelport.tasks.ablinfer_files import (
    SpecFolder,
    close_and_remove,
    convert_volume,
    pack_inputs,
    simpleitk_installed,
    unpack_one,
    write_piece,
)
from modelport.tasks.ablinfer_runs import AblinferRun, ContainerOptions
from modelport.tasks.ablinfer_store import SessionRow, SessionStore
from modelport.tasks.blobs import TaskBlob
from modelport.tasks.records import TaskRecord, TaskStatus
from modelport.tasks.service import TaskService

log = logging.getLogger("modelport.ablinfer")

CHECK_BYTES = 1024  # what the client sends to the check route, and upstream sniffed
WRITE_BYTES = 1024 * 1024  # uploads are written in pieces this big, off the event loop
QUEUE_REPORT_S = 1.0


class SessionState(StrEnum):
    WAITING = "waiting"
    READY = "ready"
    WORKING = "working"
    COMPLETE = "complete"
    FAILED = "failed"


_TASK_STATES = {
    TaskStatus.QUEUED: SessionState.READY,
    TaskStatus.RUNNING: SessionState.WORKING,
    TaskStatus.SUCCEEDED: SessionState.COMPLETE,
    TaskStatus.FAILED: SessionState.FAILED,
    TaskStatus.CANCELLED: SessionState.FAILED,
}


@dataclass(frozen=True, slots=True)
class SessionStatus:
    state: SessionState
    needed: list[str]
    info: str


@dataclass(frozen=True, slots=True)
class FiletypeCheck:
    filetype: str | None
    acceptable: bool
    can_convert: bool


@dataclass(frozen=True, slots=True)
class SessionLogs:
    """A finished session's saved log (``saved``), or the ``stream`` of a queued or
    running one: its place in the queue, then the container's output as it comes."""

    saved: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


class AblinferSessions:
    """The InferServer's sessions: created from a spec, fed inputs, run as tasks."""

    def __init__(
        self,
        *,
        specs: SpecFolder,
        tasks: TaskService,
        folder: Path,
        options: ContainerOptions,
        ttl_s: float = 3600.0,
        check_filetypes: bool = True,
        convert_inputs: bool = True,
        max_upload_bytes: int = 1024**3,
    ) -> None:
        self.specs, self.tasks, self.folder, self.options = specs, tasks, folder, options
        self.ttl_s, self.check_filetypes = ttl_s, check_filetypes
        self.convert_inputs, self.max_upload_bytes = convert_inputs, max_upload_bytes
        self.store = SessionStore(tasks.store.engine)
        self._uploading: set[tuple[str, str]] = set()
        self._queueing: dict[str, asyncio.Lock] = {}
        self._cleaning: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the specs; start the cleanup (the task service is started by its owner)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.specs.refresh)
        if self.ttl_s:
            every = max(1.0, min(60.0, self.ttl_s / 10))
            self._cleaning = asyncio.create_task(self._clean_forever(every), name="ablinfer-gc")

    async def close(self) -> None:
        if self._cleaning is not None:
            self._cleaning.cancel()
            await asyncio.gather(self._cleaning, return_exceptions=True)

    # -- models --------------------------------------------------------------------------

    async def model_ids(self) -> list[str]:
        await asyncio.to_thread(self.specs.refresh)
        return list(self.specs.specs)

    async def model(self, model: str) -> Document:
        spec = await asyncio.to_thread(self.specs.get, model)
        return spec.document

    # -- sessions --------------------------------------------------------------------------

    async def create(self, model: str, body: Any) -> str:
        """A new session for ``model`` (its id), the body checked as upstream checks it."""
        spec = await asyncio.to_thread(self.specs.get, model)
        plan = plan_session(spec, body)
        run = AblinferRun(spec=spec, plan=plan, options=self.options)
        session_id = str(uuid.uuid4())
        for part in ("inputs", "outputs"):
            (self.folder / session_id / part).mkdir(parents=True)
        now = time.time()
        row = SessionRow(
            id=session_id,
            model=spec.id,
            run=run.to_parameters(),
            needed=plan.needed(spec),
            task_id=None,
            info="",
            created_at=now,
            last_active=now,
        )
        await asyncio.to_thread(self.store.create, row)
        log.info("ABLInfer session %s for %s", session_id, spec.id)
        if not row.needed:
            # Upstream never ran a session without file inputs (the client then raised).
            await self._queue(session_id)
        return session_id

    async def check(self, model: str, name: str, header: bytes) -> FiletypeCheck:
        """What an upload starting with ``header`` would be for input ``name``."""
        spec = await asyncio.to_thread(self.specs.get, model)
        entry = spec.io("inputs").get(name)
        if entry is None:
            raise ModelNotFound(f"Unknown input {name}")
        filetype = sniff_filetype(header[:CHECK_BYTES])
        can_convert = self._can_convert(entry["extension"], filetype)
        acceptable = not self.check_filetypes or filetype_check(
            entry["extension"], filetype, can_convert
        )
        return FiletypeCheck(filetype, acceptable, can_convert)

    def _can_convert(self, extension: str, filetype: str | None) -> bool:
        return self.convert_inputs and convertible(extension, filetype) and simpleitk_installed()

    async def _session(self, session_id: str) -> tuple[SessionRow, AblinferRun]:
        row = await asyncio.to_thread(self.store.get, session_id)
        if row is None:
            raise ModelNotFound("Unknown session")
        run = AblinferRun.of(row.run)
        if run is None:
            raise SpecError(f"session {session_id} has no run")
        return row, run

    async def _task(self, row: SessionRow) -> TaskRecord | None:
        if row.task_id is None:
            return None
        return await asyncio.to_thread(self.tasks.store.get, row.task_id)

    async def status(self, session_id: str) -> SessionStatus:
        row, _run = await self._session(session_id)
        task = await self._task(row)
        if task is None:
            state = SessionState.FAILED if row.info else SessionState.WAITING
            return SessionStatus(state, row.needed, row.info)
        state = _TASK_STATES[task.status]
        return SessionStatus(state, row.needed, task.error if state is SessionState.FAILED else "")

    # -- uploads ---------------------------------------------------------------------------

    async def upload(self, session_id: str, name: str, body: AsyncIterator[bytes]) -> str:
        """Save input ``name`` from ``body`` (sha256 of its bytes); the last needed input
        queues the run. An input already uploaded may be sent again until then."""
        row, run = await self._session(session_id)
        entry = run.spec.io("inputs").get(name)
        if entry is None:
            raise ModelNotFound("Unknown input")
        if (await self.status(session_id)).state is not SessionState.WAITING:
            raise InvalidInput("Session has already received all input")
        key = (session_id, name)
        if key in self._uploading:
            raise Conflict("Resource is already being uploaded")
        self._uploading.add(key)
        try:
            if name not in row.needed:
                await asyncio.to_thread(self.store.update, session_id, needed=[*row.needed, name])
            else:
                await asyncio.to_thread(self.store.update, session_id)
            target = self.folder / session_id / "inputs" / run.spec.file_name(name)
            digest = await self._receive(body, target, entry["extension"])
        finally:
            self._uploading.discard(key)
        async with self._queueing.setdefault(session_id, asyncio.Lock()):
            row, _run = await self._session(session_id)
            needed = [n for n in row.needed if n != name]
            await asyncio.to_thread(self.store.update, session_id, needed=needed)
            if not needed:
                await self._queue(session_id)
        return digest

    async def _receive(self, body: AsyncIterator[bytes], target: Path, extension: str) -> str:
        """Stream ``body`` to ``target`` (checked, converted when it must be and can be)."""
        partial = target.with_name(target.name + ".partial")
        digest, size, checked = hashlib.sha256(), 0, False
        filetype: str | None = extension
        pending = bytearray()
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in body:
                size += len(chunk)
                if size > self.max_upload_bytes:
                    raise TooLarge(f"an input is at most {self.max_upload_bytes} bytes")
                digest.update(chunk)
                pending += chunk
                if not checked and len(pending) >= CHECK_BYTES:
                    filetype, checked = (
                        self._filetype(bytes(pending[:CHECK_BYTES]), extension),
                        True,
                    )
                if len(pending) >= WRITE_BYTES:
                    await asyncio.to_thread(write_piece, handle, bytes(pending))
                    pending.clear()
            if not checked:
                filetype = self._filetype(bytes(pending), extension)
            await asyncio.to_thread(write_piece, handle, bytes(pending))
        except BaseException:
            await asyncio.to_thread(close_and_remove, handle, partial)
            raise
        await asyncio.to_thread(handle.close)
        if filetype is not None and filetype.lower() != extension.lower():
            await asyncio.to_thread(convert_volume, partial, target, filetype, extension)
        else:
            await asyncio.to_thread(partial.replace, target)
        return digest.hexdigest()

    def _filetype(self, header: bytes, extension: str) -> str | None:
        """The type an upload is converted from (``extension``: none needed), or refuses
        it as upstream does: ``Expected filetype <extension>``."""
        if not self.check_filetypes or extension.lower() not in VOLUME_TYPES:
            return extension
        found = sniff_filetype(header)
        if (found or "").lower() == extension.lower():
            return extension
        if self._can_convert(extension, found):
            return found
        why = f"Expected filetype {extension}"
        if convertible(extension, found) and self.convert_inputs:
            why += (
                f"\nconverting {found} to {extension} needs SimpleITK on the server "
                "(pip install 'modelport[medical]')"
            )
        raise InvalidInput(why)

    async def _queue(self, session_id: str) -> None:
        """Pack the session's inputs and queue its run as a task."""
        row, run = await self._session(session_id)
        inputs = self.folder / session_id / "inputs"
        packed = self.folder / session_id / TaskBlob.INPUT.value
        names = [run.spec.file_name(n) for n in run.plan.needed(run.spec)]
        try:
            await asyncio.to_thread(pack_inputs, inputs, names, packed)
            record = await self.tasks.submit_packed(
                model=run.spec.id, version=1, packed=packed, parameters=row.run
            )
        except OSError as exc:
            await asyncio.to_thread(self.store.update, session_id, info=f"could not queue: {exc}")
            return
        finally:
            packed.unlink(missing_ok=True)
        await asyncio.to_thread(self.store.update, session_id, task_id=record.id)
        log.info("ABLInfer session %s queued as task %s", session_id, record.id)

    # -- logs and outputs ------------------------------------------------------------------

    async def logs(self, session_id: str) -> SessionLogs:
        row, _run = await self._session(session_id)
        await asyncio.to_thread(self.store.update, session_id)
        state = (await self.status(session_id)).state
        if state is SessionState.WAITING:
            raise InvalidInput("Session not running yet")
        if row.task_id is None:
            return SessionLogs(saved=b"")
        if state in (SessionState.COMPLETE, SessionState.FAILED):
            saved = b"".join([c async for c in self.tasks.logs(row.task_id, follow=False)])
            return SessionLogs(saved=saved)
        return SessionLogs(stream=self._follow(row.task_id))

    async def _follow(self, task_id: str) -> AsyncIterator[bytes]:
        while (await self.tasks.get(task_id)).status is TaskStatus.QUEUED:
            queued = await asyncio.to_thread(self.tasks.store.with_status, TaskStatus.QUEUED)
            ids = [r.id for r in queued]
            place = ids.index(task_id) + 1 if task_id in ids else 0
            yield f"Waiting, position in queue is {place}\n".encode()
            await asyncio.sleep(QUEUE_REPORT_S)
        async for chunk in self.tasks.logs(task_id):
            yield chunk

    async def output(self, session_id: str, name: str) -> Path:
        """The file of output ``name`` of a complete session."""
        row, run = await self._session(session_id)
        if name not in run.spec.io("outputs"):
            raise ModelNotFound("Unknown output")
        if not run.plan.enabled.get(name):
            raise InvalidInput("Output was not enabled")
        if (await self.status(session_id)).state is not SessionState.COMPLETE or not row.task_id:
            raise InvalidInput("Session is not complete")
        await asyncio.to_thread(self.store.update, session_id)
        path = self.folder / session_id / "outputs" / run.spec.file_name(name)
        if not path.exists():
            key = TaskBlob.OUTPUT.key(row.task_id)
            try:
                await asyncio.to_thread(unpack_one, self.tasks.blobs.open, key, path)
            except (FileNotFoundError, KeyError):
                raise Conflict(f"the output {name} is no longer kept") from None
        return path

    # -- cleanup ---------------------------------------------------------------------------

    async def clean(self) -> int:
        """Remove the sessions idle for ``ttl_s`` (not queued or running): how many."""
        idle = await asyncio.to_thread(self.store.idle_since, time.time() - self.ttl_s)
        removed = 0
        for row in idle:
            task = await self._task(row)
            if task is not None and not task.status.finished:
                continue
            ended = task.finished_at if task is not None else None
            if ended is not None and ended.timestamp() > time.time() - self.ttl_s:
                continue  # a long run: idle counts from its end
            if task is not None:
                with contextlib.suppress(ModelNotFound):
                    await self.tasks.delete(task.id)
            await asyncio.to_thread(shutil.rmtree, self.folder / row.id, True)
            await asyncio.to_thread(self.store.delete, row.id)
            self._queueing.pop(row.id, None)
            removed += 1
        if removed:
            log.info("removed %d idle ABLInfer sessions", removed)
        return removed

    async def _clean_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.clean()
            except Exception:
                log.exception("cleaning ABLInfer sessions failed")
