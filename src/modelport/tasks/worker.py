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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelport.core.repository import ModelRepository
from modelport.errors import ModelportError
from modelport.runtimes.container import (
    PROGRESS_FILE,
    ContainerJob,
    ContainerResult,
    RunControl,
    log_tail,
)
from modelport.tasks.archives import ZipLimits, extract_zip, zip_folder
from modelport.tasks.blobs import BlobStore
from modelport.tasks.broker import Broker, Delivery
from modelport.tasks.records import TaskRecord, TaskStatus, now
from modelport.tasks.store import TaskStore

log = logging.getLogger("modelport.tasks")

INPUT_BLOB = "input.zip"
OUTPUT_BLOB = "output.zip"
LOGS_BLOB = "logs.txt"
CANCEL_CHECK_S = 0.5


class TaskExecutor(Protocol):
    """Runs one job to its end (``ContainerRuntime``; a fake in tests)."""

    def run(self, job: ContainerJob, control: RunControl) -> ContainerResult: ...

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
        self, store: TaskStore, task_id: str, attempt: int, stopping: threading.Event
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
    ) -> None:
        self.store, self.blobs, self.broker = store, blobs, broker
        self.repository, self.executor, self.slots = repository, executor, slots
        self.work_dir, self.zip_limits = work_dir, zip_limits
        self.visibility_s, self.name = visibility_s, name
        self.max_attempts, self.takeover = max_attempts, takeover
        self._stopping = threading.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.running: dict[str, Slot] = {}

    def live_log(self, task_id: str) -> Path | None:
        """The log file of a task running here, growing as the container writes."""
        return self.work_dir / task_id / LOGS_BLOB if task_id in self.running else None

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
        await asyncio.gather(*self._loops, return_exceptions=True)

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
            requeue: bool | None = False
            try:
                requeue = await self._handle(slot, delivery)
            except Exception:
                log.exception("task %s: the worker failed", delivery.task_id)
                await asyncio.to_thread(
                    self._finish,
                    delivery.task_id,
                    None,
                    TaskStatus.FAILED,
                    "internal error in the worker",
                )
            if requeue is None:
                continue  # left claimed: delivered again after the visibility timeout
            if requeue:
                await self.broker.nack(delivery)
            else:
                await self.broker.ack(delivery)

    async def _handle(self, slot: Slot, delivery: Delivery) -> bool | None:
        """Run one delivery; True when it should go back to the queue, None when it is to
        be left claimed (to come back after the visibility timeout)."""
        record = await asyncio.to_thread(self.store.get, delivery.task_id)
        if record is None:
            return False
        if record.status is TaskStatus.RUNNING:
            verdict = await self._redelivered(record, delivery)
            if verdict != "take":
                return None if verdict == "leave" else False
            if record.attempts >= self.max_attempts:
                why = (f"its worker stopped while it ran, {record.attempts} times "
                       f"(max attempts {self.max_attempts})")  # fmt: skip
                await asyncio.to_thread(self._finish, record.id, record.attempts,
                                        TaskStatus.FAILED, why)  # fmt: skip
                return False
            # A container the dead worker left on this engine would still write results.
            await asyncio.to_thread(self.executor.remove_stale, [record.id])
            log.info("task %s: its worker stopped; taking it over", record.id)
        elif record.status is not TaskStatus.QUEUED:
            return False
        started = await asyncio.to_thread(
            self.store.transition, record.id, [record.status], fence=record.attempts,
            status=TaskStatus.RUNNING, started_at=now(), attempts=record.attempts + 1,
            progress=0.0, error="", exit_code=None,
        )  # fmt: skip
        if started is None:
            return False
        log.info("task %s (%s) started on %s, attempt %d", record.id, record.model,
                 slot.name, started.attempts)  # fmt: skip
        self.running[record.id] = slot
        heartbeat = asyncio.create_task(self._heartbeat(delivery))
        try:
            return await asyncio.to_thread(self._run, slot, started)
        finally:
            heartbeat.cancel()
            self.running.pop(record.id, None)
            shutil.rmtree(self.work_dir / record.id, ignore_errors=True)

    async def _redelivered(self, record: TaskRecord, delivery: Delivery) -> str:
        """A running task delivered (again). "skip" a duplicate; "take" it over when its
        claim ran out and no live worker runs it (a shared broker's directory); "leave"
        it claimed while a worker still says it runs it (its heartbeat may only be late,
        or the dead one's not yet expired): it comes back after the visibility timeout."""
        if delivery.deliveries <= 1 or self.takeover is None:
            return "skip"
        return "take" if await self.takeover(record.id) else "leave"

    async def _heartbeat(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.visibility_s / 3)
            await self.broker.extend(delivery, self.visibility_s)

    def _run(self, slot: Slot, record: TaskRecord) -> bool:
        folder = self.work_dir / record.id
        shutil.rmtree(folder, ignore_errors=True)
        input_dir, output_dir = folder / "input", folder / "output"
        log_path = folder / LOGS_BLOB
        for path in (input_dir, output_dir):
            path.mkdir(parents=True)
        log_path.touch()
        try:
            source = self.repository.source(record.model)
            if source.spec.container is None:
                raise ModelportError(f"model '{record.model}' is no longer a container model")
            with_input = folder / INPUT_BLOB
            self.blobs.get_file(f"{record.id}/{INPUT_BLOB}", with_input)
            extract_zip(with_input, input_dir, self.zip_limits)
            with_input.unlink()
        except (ModelportError, OSError) as exc:
            reason = exc.message if isinstance(exc, ModelportError) else str(exc)
            self._finish(
                record.id, record.attempts, TaskStatus.FAILED,
                f"could not prepare the task: {reason}",
            )  # fmt: skip
            return False
        # The container may run as another user: it reads /input, writes /output.
        input_dir.chmod(0o755)
        output_dir.chmod(0o777)
        job = ContainerJob(
            record.id, source.spec.container, (source.path / str(record.version)).resolve(),
            input_dir, output_dir, log_path, slot.gpu, record.parameters,
        )  # fmt: skip
        control = _Control(self.store, record.id, record.attempts, self._stopping)
        result = self.executor.run(job, control)
        if self._stopping.is_set() and result.outcome == "cancelled":
            self.store.transition(
                record.id, [TaskStatus.RUNNING], fence=record.attempts, status=TaskStatus.QUEUED,
                attempts=record.attempts - 1, progress=None, started_at=None,
            )  # fmt: skip
            log.info("task %s stopped with the worker; queued again", record.id)
            return True
        self.blobs.put_file(f"{record.id}/{LOGS_BLOB}", log_path)
        tail = log_tail(log_path)
        if result.outcome == "cancelled":
            log.info("task %s cancelled", record.id)
            return False
        if result.outcome == "timeout":
            why = f"timed out after {job.spec.timeout:g} s"
        elif result.outcome == "error":
            why = result.reason
        elif result.exit_code != 0:
            why = f"the container exited with code {result.exit_code}"
            why += f": {result.reason}" if result.reason else ""
        else:
            packed = folder / OUTPUT_BLOB
            if zip_folder(output_dir, packed, skip=frozenset({PROGRESS_FILE})) == 0:
                why = "the container exited with code 0 but left /output empty"
            else:
                self.blobs.put_file(f"{record.id}/{OUTPUT_BLOB}", packed)
                self._finish(
                    record.id, record.attempts, TaskStatus.SUCCEEDED, "", exit_code=0,
                    progress=1.0,
                    output_bytes=packed.stat().st_size,
                )  # fmt: skip
                log.info("task %s succeeded", record.id)
                return False
        reason = f"{why}; log tail:\n{tail}" if tail else f"{why} (no log output)"
        self._finish(
            record.id, record.attempts, TaskStatus.FAILED, reason, exit_code=result.exit_code
        )
        log.info("task %s failed: %s", record.id, why)
        return False

    def _finish(
        self, task_id: str, attempt: int | None, status: TaskStatus, error: str,
        **changes: object,
    ) -> None:  # fmt: skip
        """End the run of attempt ``attempt`` (None: whichever run it is)."""
        with contextlib.suppress(Exception):
            self.store.transition(
                task_id, [TaskStatus.RUNNING], fence=attempt, status=status, error=error,
                finished_at=now(), **changes,
            )  # fmt: skip
