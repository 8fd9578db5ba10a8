"""The task store (SQLite, WAL, compare-and-set) and the in-process broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from modelport.tasks.broker import MemoryBroker
from modelport.tasks.records import TaskRecord, TaskStatus, now
from modelport.tasks.store import TaskStore, sqlite_url


def _record(task_id: str, model: str = "m") -> TaskRecord:
    return TaskRecord(task_id, model, 1, TaskStatus.QUEUED, now(), {"k": [1, 2]})


def test_store_round_trip_and_compare_and_set(tmp_path: Path) -> None:
    store = TaskStore(sqlite_url(tmp_path / "tasks.db"))
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    store.create(_record("a"))
    got = store.get("a")
    assert got is not None and (got.model, got.status, got.attempts) == ("m", TaskStatus.QUEUED, 0)
    assert got.parameters == {"k": [1, 2]} and got.created_at.tzinfo is not None
    running = store.transition("a", [TaskStatus.QUEUED], status=TaskStatus.RUNNING, attempts=1)
    assert running is not None and running.status is TaskStatus.RUNNING
    # A second claim of the same task, or a finish racing a cancel, changes nothing.
    assert store.transition("a", [TaskStatus.QUEUED], status=TaskStatus.RUNNING) is None
    store.transition("a", [TaskStatus.RUNNING], status=TaskStatus.CANCELLED, finished_at=now())
    assert store.transition("a", [TaskStatus.RUNNING], status=TaskStatus.SUCCEEDED) is None
    assert store.get("a").status is TaskStatus.CANCELLED
    assert store.get("missing") is None
    store.close()


def test_store_lists_newest_first_with_filters(tmp_path: Path) -> None:
    store = TaskStore(sqlite_url(tmp_path / "tasks.db"))
    for i in range(5):
        store.create(_record(f"t{i}", "m" if i % 2 == 0 else "n"))
    page = store.page("m", limit=2)
    assert page.total == 3 and [r.id for r in page.tasks] == ["t4", "t2"]
    assert [r.id for r in store.page("m", limit=2, offset=2).tasks] == ["t0"]
    assert store.page(statuses=[TaskStatus.RUNNING]).total == 0
    assert [r.id for r in store.with_status(TaskStatus.QUEUED)] == [f"t{i}" for i in range(5)]


async def test_broker_delivers_again_after_nack_or_expiry() -> None:
    broker = MemoryBroker()
    await broker.enqueue("a")
    first = await broker.claim("w1", visibility_s=0.2, wait_s=0)
    assert first is not None and first.task_id == "a" and first.deliveries == 1
    assert await broker.claim("w2", visibility_s=10, wait_s=0) is None
    # w1 died: the claim expires and another worker gets the task.
    again = await broker.claim("w2", visibility_s=10, wait_s=2)
    assert again is not None and again.task_id == "a" and again.deliveries == 2
    await broker.nack(again)
    third = await broker.claim("w3", visibility_s=10, wait_s=0)
    assert third is not None and third.deliveries == 3
    await broker.ack(third)
    assert await broker.claim("w3", visibility_s=0.01, wait_s=0.1) is None


async def test_broker_wakes_a_waiting_worker() -> None:
    broker = MemoryBroker()
    waiting = asyncio.create_task(broker.claim("w", visibility_s=10, wait_s=5))
    await asyncio.sleep(0.05)
    await broker.enqueue("b")
    delivery = await asyncio.wait_for(waiting, 1)
    assert delivery is not None and delivery.task_id == "b"
