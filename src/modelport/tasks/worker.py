"""The task worker: slots that take task ids from the broker and run them.

A slot is one GPU (the container sees only that GPU) or one CPU slot; each runs one
task at a time. A task goes ``queued -> running`` by compare-and-set when a slot starts
it (counting an attempt), and ends ``succeeded`` or ``failed`` with the reason and the
tail of its log; a cancel (the store says ``cancelled``) stops its container. A task
found in any other state when delivered (cancelled while queued, or delivered twice) is
acknowledged and skipped, so results are written once.

With a shared broker (Redis), a task still ``running`` that is delivered again had a
worker that stopped extending its claim: when ``takeover`` agrees (no live worker says it
runs it), this worker starts it again as a new attempt. Every write of a run is fenced by
its attempt number, so a run that was taken over can no longer change the record.

After a restart on a single node, a task the stopped server left running whose container
the engine still has, and whose work folder is whole, is adopted (:meth:`TaskWorker.adopt`):
its container is followed to its end, or its result used when it ended while the server
was down, within the same attempt, so a finished command is not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

from modelport.core.repository import ModelRepository
from modelport.core.tracing import TaskSpan, Tracer
from modelport.errors import ModelportError
from modelport.runtimes.container import (
    PROGRESS_FILE,
    ContainerJob,
    ContainerResult,
    RunControl,
    log_tail,
)
from modelport.tasks.ablinfer_runs import AblinferRun
from modelport.tasks.archives import ZipLimits, extract_zip, zip_folder
from modelport.tasks.blobs import BlobStore, TaskBlob
from modelport.tasks.broker import Broker, Delivery
from modelport.tasks.container_models import task_source
from modelport.tasks.records import TaskRecord, TaskStatus, hide_paths, now
from modelport.tasks.store import TaskStore

log = logging.getLogger("modelport.tasks")

CANCEL_CHECK_S = 0.5


class Disposition(Enum):
    """What becomes of a delivery once the worker has handled it."""

    ACK = "ack"  # done with, whatever the task's outcome: never delivered again
    REQUEUE = "requeue"  # given back at once: the worker stopped while the task ran
    LEAVE = "leave"  # left claimed: delivered again after the visibility timeout


class Redelivery(Enum):
    """What a task that is running when it is delivered (again) is to this worker."""

    DUPLICATE = "duplicate"  # a second message for a running task: skipped
    ABANDONED = "abandoned"  # its claim ran out and no live worker runs it: taken over
    STILL_RUN = "still run"  # a live worker says it runs it (its heartbeat may be late)


class TaskExecutor(Protocol):
    """Runs one job to its end (``ContainerRuntime``; a fake in tests)."""

    def run(self, job: ContainerJob, control: RunControl) -> ContainerResult: ...

    def adopt(self, job: ContainerJob, control: RunControl) -> ContainerResult | None: ...

    def left_behind(self, task_ids: Collection[str]) -> set[str]: ...

    def remove_stale(self, task_ids: Collection[str] | None = None) -> int: ...


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    gpu: int | None = None


def make_slots(cpu_slots: int, gpus: Collection[int]) -> list[Slot]:
    """One slot per GPU when GPUs are given, else ``cpu_slots`` CPU slots."""
    if gpus:
        return [Slot(f"gpu{g}", g) for g in gpus]
    return [Slot(f"cpu{i}") for i in range(cpu_slots)]


class _Control:
    """A run's view of its task: cancelled when the store says so (checked at most every
    CANCEL_CHECK_S) or the worker stops; progress written to the store."""

    def __init__(
        self, *, store: TaskStore, task_id: str, attempt: int, stopping: threading.Event
    ) -> None:
        self.store, self.task_id, self.stopping = store, task_id, stopping
        self.attempt = attempt
        self.cancel_seen = False
        self._checked = 0.0

    def cancelled(self) -> bool:
        if self.stopping.is_set() or self.cancel_seen:
            return True
        if time.monotonic() - self._checked >= CANCEL_CHECK_S:
            self._checked = time.monotonic()
            record = self.store.get(self.task_id)
            self.cancel_seen = (
                record is None
                or record.status is not TaskStatus.RUNNING
                or record.attempts != self.attempt  # taken over by another worker
            )
        return self.cancel_seen

    def progress(self, value: float) -> None:
        self.store.transition(
            self.task_id, [TaskStatus.RUNNING], fence=self.attempt, progress=value
        )


class TaskWorker:
    """Runs tasks from ``broker`` in ``slots``; files under ``work_dir/<task id>/``."""

    def __init__(
        self,
        *,
        store: TaskStore,
        blobs: BlobStore,
        broker: Broker,
        repository: ModelRepository,
        executor: TaskExecutor,
        slots: list[Slot],
        work_dir: Path,
        zip_limits: ZipLimits,
        visibility_s: float = 60.0,
        name: str = "worker",
        max_attempts: int = 3,
        takeover: Callable[[str], Awaitable[bool]] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store, self.blobs, self.broker = store, blobs, broker
        self.tracer = tracer  # a span for each run (core/tracing.py); None: tracing off
        self.repository, self.executor, self.slots = repository, executor, slots
        self.work_dir, self.zip_limits = work_dir, zip_limits
        self.visibility_s, self.name = visibility_s, name
        self.max_attempts, self.takeover = max_attempts, takeover
        self._stopping = threading.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._adopted: list[asyncio.Task[None]] = []
        self.running: dict[str, Slot] = {}

    def live_log(self, task_id: str) -> Path | None:
        """The log file of a task running here, growing as the container writes."""
        if task_id not in self.running:
            return None
        return TaskBlob.LOGS.beside(self.work_dir / task_id)

    async def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._loops = [
            asyncio.create_task(self._slot_loop(slot), name=f"task-slot-{slot.name}")
            for slot in self.slots
        ]

    async def stop(self) -> None:
        """Stop taking tasks; running ones are stopped and queued again (their attempt
        not counted), to run after the restart."""
        self._stopping.set()
        await asyncio.gather(*self._loops, *self._adopted, return_exceptions=True)

    async def adopt(self, record: TaskRecord) -> bool:
        """Take up ``record``, a task that a stopped server left running, when its
        container is still on the engine (running, or ended while the server was down)
        and its work folder here still holds its output folder: the container is followed
        to its end in the background and the task concluded from it within the same
        attempt, as the run would have. False when it must run again.

        Only for the node's single worker (the in-process broker): the work folder and
        the container are this node's, and no other worker can have taken the task."""
        folder = self.work_dir / record.id
        if not (folder / "output").is_dir():
            return False
        try:
            job = self._job(record, folder, gpu=None)
        except ModelportError:
            return False
        left = await asyncio.to_thread(self.executor.left_behind, [record.id])
        if record.id not in left:
            return False
        log.info("task %s: adopting the container a stopped server left", record.id)
        self.running[record.id] = Slot("adopted")
        self._adopted.append(
            asyncio.create_task(asyncio.to_thread(self._follow_adopted, record, job))
        )
        return True

    def _follow_adopted(self, record: TaskRecord, job: ContainerJob) -> None:
        control = _Control(
            store=self.store, task_id=record.id, attempt=record.attempts, stopping=self._stopping
        )
        try:
            result = self.executor.adopt(job, control) or ContainerResult(
                "error", reason="the container a stopped server left was lost"
            )
            self._settle_run(record, job, result)
        except Exception:
            log.exception("task %s: following its adopted container failed", record.id)
            self._finish(
                record.id,
                attempt=record.attempts,
                status=TaskStatus.FAILED,
                error="internal error in the worker",
            )
        finally:
            self.running.pop(record.id, None)
            shutil.rmtree(job.log_path.parent, ignore_errors=True)

    async def _slot_loop(self, slot: Slot) -> None:
        consumer = f"{self.name}-{slot.name}"
        while not self._stopping.is_set():
            try:
                delivery = await self.broker.claim(consumer, self.visibility_s, wait_s=0.5)
            except Exception:
                log.exception("claiming a task failed")
                await asyncio.sleep(1)
                continue
            if delivery is None:
                continue
            disposition = Disposition.ACK
            try:
                disposition = await self._handle(slot, delivery)
            except Exception:
                log.exception("task %s: the worker failed", delivery.task_id)
                await asyncio.to_thread(
                    self._finish,
                    delivery.task_id,
                    attempt=None,
                    status=TaskStatus.FAILED,
                    error="internal error in the worker",
                )
            await self._settle(delivery, disposition)

    async def _settle(self, delivery: Delivery, disposition: Disposition) -> None:
        if disposition is Disposition.ACK:
            await self.broker.ack(delivery)
        elif disposition is Disposition.REQUEUE:
            await self.broker.nack(delivery)
        # LEAVE: the claim runs out and the broker delivers it again.

    async def _handle(self, slot: Slot, delivery: Delivery) -> Disposition:
        """Run one delivery, if it is this worker's to run."""
        record = await asyncio.to_thread(self.store.get, delivery.task_id)
        if record is None:
            return Disposition.ACK
        if record.status is TaskStatus.RUNNING:
            redelivery = await self._redelivered(record, delivery)
            if redelivery is Redelivery.STILL_RUN:
                return Disposition.LEAVE
            if redelivery is Redelivery.DUPLICATE or not await self._take_over(record):
                return Disposition.ACK
        elif record.status is not TaskStatus.QUEUED:
            return Disposition.ACK
        started = await asyncio.to_thread(
            self.store.transition,
            record.id,
            [record.status],
            fence=record.attempts,
            status=TaskStatus.RUNNING,
            started_at=now(),
            attempts=record.attempts + 1,
            progress=0.0,
            error="",
            exit_code=None,
        )
        if started is None:
            return Disposition.ACK
        log.info(
            "task %s (%s) started on %s, attempt %d",
            record.id,
            record.model,
            slot.name,
            started.attempts,
        )
        self.running[record.id] = slot
        span = None
        if self.tracer is not None:
            span = self.tracer.task(
                task_id=record.id,
                model=record.model,
                attempt=started.attempts,
                traceparent=record.traceparent,
            )
        # The container joins the run's span, else the trace the task came in (if any).
        traceparent = span.traceparent if span is not None else record.traceparent
        heartbeat = asyncio.create_task(self._heartbeat(delivery))
        disposition = Disposition.ACK
        try:
            disposition = await asyncio.to_thread(self._run, slot, started, traceparent)
            return disposition
        finally:
            heartbeat.cancel()
            self.running.pop(record.id, None)
            shutil.rmtree(self.work_dir / record.id, ignore_errors=True)
            if span is not None:
                await self._end_span(span, record.id, disposition)

    async def _end_span(self, span: TaskSpan, task_id: str, disposition: Disposition) -> None:
        """End a run's span with how the run left the task (queued again, or its end)."""
        if disposition is Disposition.REQUEUE:
            span.end("requeued", failed=False)
            return
        record = await asyncio.to_thread(self.store.get, task_id)
        status = record.status if record is not None else None
        span.end(status.value if status else "gone", failed=status is TaskStatus.FAILED)

    async def _redelivered(self, record: TaskRecord, delivery: Delivery) -> Redelivery:
        """A running task delivered (again): a duplicate, unless its claim ran out (a
        later delivery) and a shared broker's directory says whether a live worker still
        runs it."""
        if delivery.deliveries <= 1 or self.takeover is None:
            return Redelivery.DUPLICATE
        return Redelivery.ABANDONED if await self.takeover(record.id) else Redelivery.STILL_RUN

    async def _take_over(self, record: TaskRecord) -> bool:
        """Whether to run an abandoned task again; fails it once out of attempts."""
        if record.attempts >= self.max_attempts:
            why = (
                f"its worker stopped while it ran, {record.attempts} times "
                f"(max attempts {self.max_attempts})"
            )
            await asyncio.to_thread(
                self._finish,
                record.id,
                attempt=record.attempts,
                status=TaskStatus.FAILED,
                error=why,
            )
            return False
        # A container the dead worker left on this engine would still write results.
        await asyncio.to_thread(self.executor.remove_stale, [record.id])
        log.info("task %s: its worker stopped; taking it over", record.id)
        return True

    async def _heartbeat(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.visibility_s / 3)
            await self.broker.extend(delivery, self.visibility_s)

    def _run(self, slot: Slot, record: TaskRecord, traceparent: str) -> Disposition:
        folder = self.work_dir / record.id
        shutil.rmtree(folder, ignore_errors=True)
        try:
            job = replace(self._prepare(slot, record, folder), traceparent=traceparent)
        except (ModelportError, OSError) as exc:
            reason = exc.message if isinstance(exc, ModelportError) else str(exc)
            self._finish(
                record.id,
                attempt=record.attempts,
                status=TaskStatus.FAILED,
                error=f"could not prepare the task: {self._hide_paths(reason, folder)}",
            )
            return Disposition.ACK
        control = _Control(
            store=self.store, task_id=record.id, attempt=record.attempts, stopping=self._stopping
        )
        return self._settle_run(record, job, self.executor.run(job, control))

    def _settle_run(
        self, record: TaskRecord, job: ContainerJob, result: ContainerResult
    ) -> Disposition:
        """Record how a run ended: queued again when the worker stopped it, else its logs
        kept and the task concluded (unless it was cancelled)."""
        if self._stopping.is_set() and result.outcome == "cancelled":
            self.store.transition(
                record.id,
                [TaskStatus.RUNNING],
                fence=record.attempts,
                status=TaskStatus.QUEUED,
                attempts=record.attempts - 1,
                progress=None,
                started_at=None,
            )
            log.info("task %s stopped with the worker; queued again", record.id)
            return Disposition.REQUEUE
        self.blobs.put_file(TaskBlob.LOGS.key(record.id), job.log_path)
        if result.outcome == "cancelled":
            log.info("task %s cancelled", record.id)
        else:
            self._conclude(record, job, result)
        return Disposition.ACK

    def _prepare(self, slot: Slot, record: TaskRecord, folder: Path) -> ContainerJob:
        """The task's folders made and its input unpacked: the job to run."""
        job = self._job(record, folder, gpu=slot.gpu)
        for path in (job.input_dir, job.output_dir):
            path.mkdir(parents=True)
        job.log_path.touch()
        self._unpack_input(record.id, folder, job.input_dir, job.output_dir)
        return job

    def _job(self, record: TaskRecord, folder: Path, *, gpu: int | None) -> ContainerJob:
        """The container job of ``record`` with its files under ``folder`` (made by
        :meth:`_prepare`, or left by a stopped server for :meth:`adopt`)."""
        input_dir, output_dir = folder / "input", folder / "output"
        log_path = TaskBlob.LOGS.beside(folder)
        # An ABLInfer session carries its own spec; other tasks name a repository model.
        ablinfer = AblinferRun.of(record.parameters)
        if ablinfer is not None:
            return ablinfer.job(
                task_id=record.id,
                folder=folder,
                input_dir=input_dir,
                output_dir=output_dir,
                log_path=log_path,
                gpu=gpu,
            )
        source = task_source(self.repository, record.model)
        if source.spec.container is None:
            raise ModelportError(f"model '{record.model}' is no longer a container model")
        return ContainerJob(
            task_id=record.id,
            spec=source.spec.container,
            model_dir=(source.path / str(record.version)).resolve(),
            input_dir=input_dir,
            output_dir=output_dir,
            log_path=log_path,
            gpu=gpu,
            parameters=record.parameters,
        )

    def _unpack_input(self, task_id: str, folder: Path, input_dir: Path, output_dir: Path) -> None:
        with_input = TaskBlob.INPUT.beside(folder)
        self.blobs.get_file(TaskBlob.INPUT.key(task_id), with_input)
        extract_zip(with_input, input_dir, self.zip_limits)
        with_input.unlink()
        # The container may run as another user: it reads /input, writes /output.
        input_dir.chmod(0o755)
        output_dir.chmod(0o777)

    def _conclude(self, record: TaskRecord, job: ContainerJob, result: ContainerResult) -> None:
        """Record how a run that was not cancelled ended, with its output when it made one."""
        if result.outcome == "timeout":
            why = f"timed out after {job.spec.timeout:g} s"
        elif result.outcome == "error":
            why = self._hide_paths(result.reason, job.log_path.parent, job.model_dir)
        elif result.exit_code != 0:
            why = f"the container exited with code {result.exit_code}"
            why += f": {result.reason}" if result.reason else ""
        else:
            packed = TaskBlob.OUTPUT.beside(job.log_path.parent)
            packed_files = zip_folder(job.output_dir, packed, skip=frozenset({PROGRESS_FILE}))
            if packed_files == 0 and not record.accept_empty_output:
                why = "the container exited with code 0 but left /output empty"
            else:
                self.blobs.put_file(TaskBlob.OUTPUT.key(record.id), packed)
                self._finish(
                    record.id,
                    attempt=record.attempts,
                    status=TaskStatus.SUCCEEDED,
                    error="",
                    exit_code=0,
                    progress=1.0,
                    output_bytes=packed.stat().st_size,
                )
                log.info("task %s succeeded", record.id)
                return
        tail = log_tail(job.log_path)
        reason = f"{why}; log tail:\n{tail}" if tail else f"{why} (no log output)"
        self._finish(
            record.id,
            attempt=record.attempts,
            status=TaskStatus.FAILED,
            error=reason,
            exit_code=result.exit_code,
        )
        log.info("task %s failed: %s", record.id, why)

    def _hide_paths(self, text: str, folder: Path, model_dir: Path | None = None) -> str:
        """A reason without the server's paths: the task's folders as the container sees
        them (``/input``, ``/output``, ``/model``), other files relative to the task."""
        names = {folder / "input": "/input", folder / "output": "/output", folder: ""}
        if model_dir is not None:
            names[model_dir] = "/model"
        if self.blobs.local_root is not None:
            names[self.blobs.local_root / folder.name] = ""
        return hide_paths(text, names)

    def _finish(
        self,
        task_id: str,
        *,
        attempt: int | None,
        status: TaskStatus,
        error: str,
        **changes: object,
    ) -> None:
        """End the run of attempt ``attempt`` (None: whichever run it is)."""
        with contextlib.suppress(Exception):
            self.store.transition(
                task_id,
                [TaskStatus.RUNNING],
                fence=attempt,
                status=status,
                error=error,
                finished_at=now(),
                **changes,
            )
