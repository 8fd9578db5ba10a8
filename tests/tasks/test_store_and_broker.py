"""The task store (compare-and-set, on SQLite in WAL mode and on a real PostgreSQL) and
the in-process broker."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelport.tasks.broker import MemoryBroker
from modelport.tasks.records import TaskRecord, TaskStatus, now
from modelport.tasks.store import TaskStore, engine_url, sqlite_url


def _record(task_id: str, model: str = "m", status: TaskStatus = TaskStatus.QUEUED) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        model=model,
        version=1,
        status=status,
        created_at=now(),
        parameters={"k": [1, 2]},
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """A new, empty store on each backend: a SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "tasks.db")
    else:
        url = request.getfixturevalue("postgres_url")
    store = TaskStore(url)
    yield store
    store.close()


def test_sqlite_store_runs_in_wal_mode(tmp_path: Path) -> None:
    store = TaskStore(sqlite_url(tmp_path / "tasks.db"))
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    store.close()


def test_a_table_of_an_older_modelport_gets_the_new_columns(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "old.db")
    old = sa.create_engine(url)
    with old.begin() as conn:  # the table as the first release made it
        conn.execute(sa.text(
            "CREATE TABLE modelport_tasks (id VARCHAR(64) PRIMARY KEY, model VARCHAR(255) "
            "NOT NULL, version INTEGER NOT NULL, status VARCHAR(16) NOT NULL, created_at FLOAT "
            "NOT NULL, parameters TEXT NOT NULL, started_at FLOAT, finished_at FLOAT, attempts "
            "INTEGER NOT NULL, exit_code INTEGER, error TEXT NOT NULL, progress FLOAT, "
            "input_bytes BIGINT NOT NULL, output_bytes BIGINT, files_purged BOOLEAN NOT NULL)"
        ))  # fmt: skip
        conn.execute(sa.text(
            "INSERT INTO modelport_tasks VALUES ('t0', 'm', 1, 'queued', 1.0, '{}', NULL, "
            "NULL, 0, NULL, '', NULL, 3, NULL, 0)"
        ))  # fmt: skip
    old.dispose()
    store = TaskStore(url)
    try:
        before = store.get("t0")
        assert before is not None and before.accept_empty_output is False
        store.create(TaskRecord(id="t1", model="m", version=1, status=TaskStatus.QUEUED,
                                created_at=now(), accept_empty_output=True))  # fmt: skip
        after = store.get("t1")
        assert after is not None and after.accept_empty_output is True
        TaskStore(url).close()  # a second start finds the column there
    finally:
        store.close()


def test_plain_postgresql_url_means_psycopg_3(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://")
    store = TaskStore(postgres_url)
    assert store.engine.dialect.driver == "psycopg" and store.url == postgres_url
    store.close()
    assert engine_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    # A URL that names its driver, or another database, is used as given.
    assert engine_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    assert engine_url("sqlite:///x.db").drivername == "sqlite"


def test_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes ``import psycopg`` fail
    with pytest.raises(ImportError, match=r"pip install 'modelport\[postgres\]'"):
        TaskStore("postgresql://postgres@127.0.0.1:1/none")


def test_store_round_trip_and_compare_and_set(store: TaskStore) -> None:
    store.create(_record("a"))
    got = store.get("a")
    assert got is not None and (got.model, got.status, got.attempts) == ("m", TaskStatus.QUEUED, 0)
    assert got.parameters == {"k": [1, 2]} and got.files_purged is False
    running = store.transition("a", [TaskStatus.QUEUED], status=TaskStatus.RUNNING, attempts=1)
    assert running is not None and running.status is TaskStatus.RUNNING
    # A second claim of the same task, or a finish racing a cancel, changes nothing.
    assert store.transition("a", [TaskStatus.QUEUED], status=TaskStatus.RUNNING) is None
    store.transition("a", [TaskStatus.RUNNING], status=TaskStatus.CANCELLED, finished_at=now())
    assert store.transition("a", [TaskStatus.RUNNING], status=TaskStatus.SUCCEEDED) is None
    assert store.get("a").status is TaskStatus.CANCELLED
    assert store.get("missing") is None
    assert store.transition("missing", [TaskStatus.QUEUED], status=TaskStatus.RUNNING) is None
    assert store.delete("a") and not store.delete("a") and store.get("a") is None


def test_store_lists_newest_first_with_filters(store: TaskStore) -> None:
    for i in range(5):
        store.create(_record(f"t{i}", "m" if i % 2 == 0 else "n"))
    store.transition("t3", [TaskStatus.QUEUED], status=TaskStatus.RUNNING)
    store.transition("t4", [TaskStatus.QUEUED], status=TaskStatus.RUNNING)
    page = store.page("m", limit=2)
    assert (page.total, page.limit, page.offset) == (3, 2, 0)
    assert [r.id for r in page.tasks] == ["t4", "t2"]
    assert [r.id for r in store.page("m", limit=2, offset=2).tasks] == ["t0"]
    assert store.page("m", limit=2, offset=5).tasks == []
    assert [r.id for r in store.page().tasks] == ["t4", "t3", "t2", "t1", "t0"]
    running = store.page(statuses=[TaskStatus.RUNNING])
    assert running.total == 2 and [r.id for r in running.tasks] == ["t4", "t3"]
    assert [r.id for r in store.page("n", statuses=[TaskStatus.RUNNING]).tasks] == ["t3"]
    assert store.page("other").total == 0
    assert store.page(statuses=[TaskStatus.FAILED]).total == 0
    assert [r.id for r in store.with_status(TaskStatus.QUEUED)] == ["t0", "t1", "t2"]
    both = store.with_status(TaskStatus.QUEUED, TaskStatus.RUNNING)
    assert [r.id for r in both] == [f"t{i}" for i in range(5)]


def test_store_keeps_timestamps_exactly_in_utc(store: TaskStore) -> None:
    record = _record("a")
    store.create(record)
    started, finished = now(), now() + timedelta(seconds=1.5)
    store.transition("a", [TaskStatus.QUEUED], status=TaskStatus.RUNNING, started_at=started)
    done = store.transition(
        "a", [TaskStatus.RUNNING], status=TaskStatus.SUCCEEDED, finished_at=finished
    )
    assert done is not None
    # Microseconds survive: the columns are double precision on both backends.
    assert (done.created_at, done.started_at, done.finished_at) == (
        record.created_at,
        started,
        finished,
    )
    for stamp in (done.created_at, done.started_at, done.finished_at):
        assert stamp is not None and stamp.utcoffset() == timedelta(0)
    # Only finished tasks whose files are kept, finished before the cut-off, are found.
    assert store.finished_before(finished) == []
    assert [r.id for r in store.finished_before(finished + timedelta(microseconds=1))] == ["a"]
    store.transition("a", [TaskStatus.SUCCEEDED], files_purged=True)
    assert store.finished_before(finished + timedelta(days=1)) == []


def test_a_cancel_racing_a_finish_ends_in_exactly_one_state(store: TaskStore) -> None:
    ids = [f"race{i}" for i in range(20)]
    for task_id in ids:
        store.create(_record(task_id, status=TaskStatus.RUNNING))
    results: dict[tuple[str, TaskStatus], TaskRecord | None] = {}

    def move(task_id: str, to: TaskStatus, start: threading.Barrier) -> None:
        start.wait(timeout=10)
        results[task_id, to] = store.transition(
            task_id, [TaskStatus.RUNNING], status=to, finished_at=now()
        )

    for task_id in ids:
        start = threading.Barrier(2)
        threads = [
            threading.Thread(target=move, args=(task_id, to, start))
            for to in (TaskStatus.CANCELLED, TaskStatus.SUCCEEDED)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        won = [
            to
            for to in (TaskStatus.CANCELLED, TaskStatus.SUCCEEDED)
            if results[task_id, to] is not None
        ]
        assert len(won) == 1, (task_id, won)
        final = store.get(task_id)
        assert final is not None and final.status is won[0]
        assert results[task_id, won[0]] == final


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
