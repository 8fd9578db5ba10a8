"""The tasks' upkeep: recovery after a restart, reconciling the broker with the store
(with a shared broker), and purging old files. :class:`TaskService` runs these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from modelport.tasks.blobs import BlobStore
from modelport.tasks.broker import Broker
from modelport.tasks.records import FINISHED, TaskRecord, TaskStatus, now
from modelport.tasks.store import TaskStore
from modelport.tasks.worker import TaskWorker

log = logging.getLogger("modelport.tasks")

RECONCILE_S = 5.0
ADOPT_S = 0.5  # several server processes: how soon process 0 takes up others' tasks


class TaskUpkeep:
    def __init__(
        self,
        *,
        store: TaskStore,
        blobs: BlobStore,
        broker: Broker,
        worker: TaskWorker | None,
        max_attempts: int,
        retention: timedelta | None,
        shared: bool,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        """``shared``: the broker is shared with other nodes (Redis), so tasks running
        here when the server stopped may be running elsewhere now. ``known``: with
        several server processes, whether this process's broker has a task; the queued
        tasks it lacks (stored by the others) are adopted."""
        self.store, self.blobs, self.broker, self.worker = store, blobs, broker, worker
        self.max_attempts, self.retention, self.shared = max_attempts, retention, shared
        self.known = known

    async def recover(self, executor_cleanup: bool = True) -> tuple[int, int]:
        """After a restart, as the only worker (the in-process broker): tasks left running
        by a dead server are adopted when their container is still there (see
        :meth:`TaskWorker.adopt`), else queued again, or failed once out of attempts, and
        every queued task is enqueued. Returns (queued, failed).

        With a shared broker other workers may be running those tasks: only the queued
        ones are enqueued again (a duplicate delivery is skipped by the worker), and a
        dead worker's tasks come back through the broker's visibility timeout."""
        orphans: list[TaskRecord] = []
        if not self.shared:
            orphans = await asyncio.to_thread(self.store.with_status, TaskStatus.RUNNING)
        if self.worker is not None:
            # A container that ran on (or finished while the server was down) is followed
            # and its result used, so a command is not run twice when it need not be.
            orphans = [r for r in orphans if not await self.worker.adopt(r)]
        if orphans and executor_cleanup and self.worker is not None:
            removed = await asyncio.to_thread(
                self.worker.executor.remove_stale, [r.id for r in orphans]
            )
            if removed:
                log.info("removed %d containers left by a stopped server", removed)
        failed = 0
        for record in orphans:
            if record.attempts >= self.max_attempts:
                failed += 1
                why = (
                    f"the server stopped while the task ran, {record.attempts} times "
                    f"(max attempts {self.max_attempts})"
                )
                await asyncio.to_thread(
                    self.store.transition,
                    record.id,
                    [TaskStatus.RUNNING],
                    status=TaskStatus.FAILED,
                    finished_at=now(),
                    error=why,
                )
            else:
                await asyncio.to_thread(
                    self.store.transition,
                    record.id,
                    [TaskStatus.RUNNING],
                    status=TaskStatus.QUEUED,
                    progress=None,
                )
        queued = await asyncio.to_thread(self.store.with_status, TaskStatus.QUEUED)
        for record in queued:
            await self.broker.enqueue(record.id, record.model)
        if queued or failed:
            log.info("recovered tasks: %d queued again, %d failed", len(queued), failed)
        return len(queued), failed

    async def reconcile(self) -> int:
        """With a shared broker: queue again the queued tasks of a model whose stream is
        empty (Redis lost them, or was away when they were submitted). With several
        server processes (``known``): queue the stored tasks this process's broker lacks.
        A duplicate delivery would be skipped, so this never runs a task twice. Returns
        how many."""
        queued = await asyncio.to_thread(self.store.with_status, TaskStatus.QUEUED)
        if self.known is not None:
            adopted = [r for r in queued if not self.known(r.id)]
            for record in adopted:
                await self.broker.enqueue(record.id, record.model)
            return len(adopted)
        by_model: dict[str, list[str]] = {}
        for record in queued:
            by_model.setdefault(record.model, []).append(record.id)
        count = 0
        for model, ids in by_model.items():
            if await self.broker.backlog(model) == 0:
                for task_id in ids:
                    await self.broker.enqueue(task_id, model)
                count += len(ids)
        if count:
            log.info("queued %d stored tasks again (their broker messages were missing)", count)
        return count

    async def reconcile_forever(self, every_s: float = RECONCILE_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.reconcile()
            except Exception as exc:
                log.warning("checking the broker against the store failed: %s", exc)

    async def purge_expired(self) -> int:
        """Remove the files of tasks finished longer ago than the retention time."""
        if self.retention is None:
            return 0
        old = await asyncio.to_thread(self.store.finished_before, now() - self.retention)
        for record in old:
            await asyncio.to_thread(self.blobs.delete_prefix, record.id)
            await asyncio.to_thread(self.store.transition, record.id, FINISHED, files_purged=True)
        return len(old)

    async def purge_forever(self, every_s: float = 600.0) -> None:
        while True:
            try:
                await self.purge_expired()
            except Exception:
                log.exception("purging old task files failed")
            await asyncio.sleep(every_s)
