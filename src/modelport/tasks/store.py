"""Task records in SQL through SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL.

Every change of status is a compare-and-set (``UPDATE ... WHERE status IN (...)``), so a
cancel racing a worker's finish, or a task delivered twice, ends in exactly one state.
Calls block; the service and the worker make them from threads.

A plain ``postgresql://`` URL (or ``postgres://``) means psycopg 3, the driver the
``postgres`` extra installs (``pip install 'modelport[postgres]'``), not SQLAlchemy's
default psycopg2; a URL naming a driver (``postgresql+psycopg2://``) is used as given.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from modelport.tasks.records import TaskPage, TaskRecord, TaskStatus

metadata = sa.MetaData()

# Timestamps are stored as Unix seconds: the same on SQLite and PostgreSQL, no zones.
tasks_table = sa.Table(
    "modelport_tasks",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(255), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("parameters", sa.Text, nullable=False, default="{}"),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("progress", sa.Float),
    sa.Column("input_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("output_bytes", sa.BigInteger),
    sa.Column("files_purged", sa.Boolean, nullable=False, default=False),
    sa.Column("accept_empty_output", sa.Boolean, nullable=False, default=False),
    sa.Column("traceparent", sa.String(64), nullable=False, default=""),
)
# Columns added after the table's first release: added to an older table at start, with
# the value older rows mean ("false").
_ADDED_COLUMNS = {
    "accept_empty_output": "BOOLEAN NOT NULL DEFAULT FALSE",
    "traceparent": "VARCHAR(64) NOT NULL DEFAULT ''",
}

_TIMES = ("created_at", "started_at", "finished_at")


def _to_row(values: dict[str, Any]) -> dict[str, Any]:
    row = dict(values)
    for key in _TIMES:
        if isinstance(row.get(key), datetime):
            row[key] = row[key].timestamp()
    if "parameters" in row:
        row["parameters"] = orjson.dumps(row["parameters"]).decode()
    if isinstance(row.get("status"), TaskStatus):
        row["status"] = row["status"].value
    return row


def _from_row(row: sa.Row[Any]) -> TaskRecord:
    data = dict(row._mapping)
    for key in _TIMES:
        if data[key] is not None:
            data[key] = datetime.fromtimestamp(data[key], UTC)
    data["status"] = TaskStatus(data["status"])
    data["parameters"] = orjson.loads(data["parameters"])
    return TaskRecord(**data)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def engine_url(url: str) -> sa.URL:
    """``url`` with a plain ``postgresql://`` (or ``postgres://``) pointed at psycopg 3."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


CREATE_TRIES = 10


class TaskStore:
    """The task table. ``url`` is any SQLAlchemy URL; the table is created if missing.

    A PostgreSQL URL without psycopg installed raises ImportError naming the extra.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        target = engine_url(url)
        try:
            self.engine: Engine = sa.create_engine(target, future=True)
        except ImportError as exc:
            if target.drivername != "postgresql+psycopg":
                raise
            raise ImportError(
                f"a PostgreSQL task store needs psycopg ({exc}); pip install 'modelport[postgres]'"
            ) from exc
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._create_table()

    def _create_table(self) -> None:
        """Create the table unless it is there. Several processes starting at once on a
        new database (server processes, workers) may race: the loser finds the table
        made by the winner, or retries while the database is locked."""
        for attempt in range(CREATE_TRIES):
            try:
                metadata.create_all(self.engine)
                break
            except sa.exc.DBAPIError:
                if sa.inspect(self.engine).has_table(tasks_table.name):
                    break
                if attempt == CREATE_TRIES - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a table made by an older modelport up to date (another process starting
        at the same time may add a column first: its error is then ignored)."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns(tasks_table.name)}
        for name, declaration in _ADDED_COLUMNS.items():
            if name in have:
                continue
            statement = f"ALTER TABLE {tasks_table.name} ADD COLUMN {name} {declaration}"
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(statement))
            except sa.exc.DBAPIError:
                columns = sa.inspect(self.engine).get_columns(tasks_table.name)
                if name not in {c["name"] for c in columns}:
                    raise

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Return once the database has answered a query; raise what reaching it raised."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def create(self, record: TaskRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(tasks_table.insert().values(_to_row(record.fields())))

    def get(self, task_id: str) -> TaskRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(tasks_table.select().where(tasks_table.c.id == task_id)).first()
        return None if row is None else _from_row(row)

    def page(
        self,
        model: str | None = None,
        *,
        statuses: Collection[TaskStatus] = (),
        limit: int = 50,
        offset: int = 0,
    ) -> TaskPage:
        where = []
        if model:
            where.append(tasks_table.c.model == model)
        if statuses:
            where.append(tasks_table.c.status.in_([s.value for s in statuses]))
        query = (
            tasks_table.select()
            .where(*where)
            .order_by(tasks_table.c.created_at.desc(), tasks_table.c.id)
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(tasks_table).where(*where)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            total = conn.execute(count).scalar_one()
        return TaskPage(
            tasks=[_from_row(r) for r in rows], total=int(total), limit=limit, offset=offset
        )

    def transition(
        self,
        task_id: str,
        allowed: Iterable[TaskStatus],
        *,
        fence: int | None = None,
        **changes: Any,
    ) -> TaskRecord | None:
        """Apply ``changes`` only if the task's status is one of ``allowed`` (and, with a
        ``fence``, its ``attempts`` still equal it: the run that wrote it is the current
        one); the updated record, or None when it was in another state."""
        statuses = [s.value for s in allowed]
        where = [tasks_table.c.id == task_id, tasks_table.c.status.in_(statuses)]
        if fence is not None:
            where.append(tasks_table.c.attempts == fence)
        with self.engine.begin() as conn:
            done = conn.execute(tasks_table.update().where(*where).values(_to_row(changes)))
            if done.rowcount != 1:
                return None
            row = conn.execute(tasks_table.select().where(tasks_table.c.id == task_id)).one()
        return _from_row(row)

    def count_by_status(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status, 0 included)."""
        query = sa.select(tasks_table.c.status, sa.func.count()).group_by(tasks_table.c.status)
        with self.engine.connect() as conn:
            counted = {str(status): int(n) for status, n in conn.execute(query)}
        return {status: counted.get(status.value, 0) for status in TaskStatus}

    def with_status(self, *statuses: TaskStatus) -> list[TaskRecord]:
        query = (
            tasks_table.select()
            .where(tasks_table.c.status.in_([s.value for s in statuses]))
            .order_by(tasks_table.c.created_at, tasks_table.c.id)
        )
        with self.engine.connect() as conn:
            return [_from_row(r) for r in conn.execute(query).all()]

    def finished_before(self, when: datetime) -> list[TaskRecord]:
        """Finished tasks whose files are still kept, finished before ``when``."""
        query = tasks_table.select().where(
            tasks_table.c.finished_at < when.timestamp(),
            tasks_table.c.files_purged.is_(False),
        )
        with self.engine.connect() as conn:
            return [_from_row(r) for r in conn.execute(query).all()]

    def delete(self, task_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(tasks_table.delete().where(tasks_table.c.id == task_id))
        return bool(done.rowcount)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (status polls) go on while a worker writes; the busy timeout makes
    # a second process (a restarted server, a CLI) wait for the lock instead of failing.
    # (The timeout first: switching to WAL takes a lock another process may hold.)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
