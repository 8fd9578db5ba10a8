"""A task's record: what was asked, where it stands, and how it ended."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def now() -> datetime:
    return datetime.now(UTC)


def hide_paths(text: str, names: Mapping[Path, str]) -> str:
    """``text`` with each server path of ``names`` replaced by the name a client knows
    (``""``: what lies under it is named relative to it), so no task error or refusal
    shows where the server keeps its files."""
    for path, name in sorted(names.items(), key=lambda item: -len(str(item[0]))):
        text = text.replace(f"{path}/", f"{name}/" if name else "")
        text = text.replace(str(path), name or ".")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """One task. ``attempts`` counts the times a worker started it; ``error`` says why a
    task failed (with the tail of its log), ``exit_code`` is the container's.
    ``accept_empty_output``: a container that leaves ``/output`` empty succeeds with an
    empty zip (the zip-task cluster server's clients expect that) instead of failing.
    ``traceparent``: the trace the task was submitted in (its container gets it)."""

    id: str
    model: str
    version: int
    status: TaskStatus
    created_at: datetime
    parameters: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    exit_code: int | None = None
    error: str = ""
    progress: float | None = None
    input_bytes: int = 0
    output_bytes: int | None = None
    files_purged: bool = False
    accept_empty_output: bool = False
    # The W3C traceparent the task was submitted with ("" : none): its span's parent.
    traceparent: str = ""

    def fields(self) -> dict[str, Any]:
        """The fields as they are, for the store."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("created_at", "started_at", "finished_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        data["status"] = self.status.value
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPage:
    """One page of a listing, newest first; ``total`` counts every match."""

    tasks: list[TaskRecord]
    total: int
    limit: int
    offset: int
