"""``GET /api/workers``: the live nodes of a cluster (``modelport serve --broker``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter

from modelport.api.http.errors import error_responses

WorkerLister = Callable[[], Awaitable[list[dict[str, Any]]]]


def build_workers_router(lister: WorkerLister | None) -> APIRouter:
    router = APIRouter(tags=["workers"])

    @router.get("/api/workers", responses=error_responses(503))
    async def list_workers() -> dict[str, Any]:
        """Each live worker: its id, role, host, the models it hosts online (with their
        versions), its container models, task slots and running tasks, and when it last
        sent a heartbeat. Without a Redis broker the list is empty; with Redis away, 503."""
        if lister is None:
            return {"broker": "in-process", "workers": []}
        return {"broker": "redis", "workers": await lister()}

    return router
