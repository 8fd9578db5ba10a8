"""ABLInfer sessions in SQL, beside the task table (upstream kept them in memory).

A session is a row until its last input arrives; from then on its run is a task, and
the row names it (``task_id``): the task's record says where the run stands. Calls
block; the session service makes them from threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

sessions_table = sa.Table(
    "modelport_ablinfer_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("run", sa.Text, nullable=False),  # the task parameters of its run (AblinferRun)
    sa.Column("needed", sa.Text, nullable=False),  # the inputs still to upload
    sa.Column("task_id", sa.String(64)),
    sa.Column("info", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_active", sa.Float, nullable=False, index=True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRow:
    """One session as stored; ``info`` says why it failed before its run was queued."""

    id: str
    model: str
    run: dict[str, Any]
    needed: list[str]
    task_id: str | None
    info: str
    created_at: float
    last_active: float


def _from_row(row: sa.Row[Any]) -> SessionRow:
    data = dict(row._mapping)
    data["run"] = orjson.loads(data["run"])
    data["needed"] = orjson.loads(data["needed"])
    return SessionRow(**data)


class SessionStore:
    """The session table, on the task store's database (its ``engine``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)

    def create(self, row: SessionRow) -> None:
        values = {
            "id": row.id,
            "model": row.model,
            "run": orjson.dumps(row.run).decode(),
            "needed": orjson.dumps(row.needed).decode(),
            "task_id": row.task_id,
            "info": row.info,
            "created_at": row.created_at,
            "last_active": row.last_active,
        }
        with self.engine.begin() as conn:
            conn.execute(sessions_table.insert().values(values))

    def get(self, session_id: str) -> SessionRow | None:
        query = sessions_table.select().where(sessions_table.c.id == session_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _from_row(row)

    def update(
        self,
        session_id: str,
        *,
        needed: list[str] | None = None,
        task_id: str | None = None,
        info: str | None = None,
    ) -> None:
        """Change what is given, and count the session as active now."""
        values: dict[str, Any] = {"last_active": time.time()}
        if needed is not None:
            values["needed"] = orjson.dumps(needed).decode()
        if task_id is not None:
            values["task_id"] = task_id
        if info is not None:
            values["info"] = info
        with self.engine.begin() as conn:
            conn.execute(
                sessions_table.update().where(sessions_table.c.id == session_id).values(values)
            )

    def idle_since(self, when: float) -> list[SessionRow]:
        """Sessions with no request since ``when``."""
        query = sessions_table.select().where(sessions_table.c.last_active < when)
        with self.engine.connect() as conn:
            return [_from_row(r) for r in conn.execute(query).all()]

    def delete(self, session_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sessions_table.delete().where(sessions_table.c.id == session_id))
