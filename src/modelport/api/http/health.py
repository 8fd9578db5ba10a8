"""Health for orchestrators: ``GET /health`` (and ``/healthz``, ``/readyz``) answers 200
or 503 with JSON naming each check; ``GET /livez`` 200 while the process answers.

The checks (each bounded by :data:`CHECK_TIMEOUT_S`, all run at once):

- ``models``: every model has finished loading (failed ones are listed, and do not fail
  the check, as KServe's ``/v2/health/ready``);
- ``serving``: the server is not draining (after SIGTERM it fails at once, so load
  balancers stop sending, while requests are still answered: ``server/serve.py``);
- ``task_store``: the task records' database answers a query;
- ``broker``: the shared broker (``--broker redis://...``) answers, when one is set;
- ``disk``: ``data_dir`` has at least :data:`MIN_FREE_BYTES` free.

The facts come from the core and the task service; these routes only run and report
them. They are public like ``/v2/health/*`` (``public_health``).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Response

from modelport.api.http.openapi import answers
from modelport.core.entries import ModelState
from modelport.core.service import InferenceService
from modelport.tasks.service import TaskService

CHECK_TIMEOUT_S = 2.0
MIN_FREE_BYTES = 64 * 2**20  # below this, task uploads and outputs start failing
HEALTH_ROUTES = ("/health", "/healthz", "/readyz")
LIVE_ROUTE = "/livez"
# What /health answers, healthy (200) or not (503).
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "failing"]},
        "failing": {"type": "array", "items": {"type": "string"}},
        "checks": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
            },
        },
    },
    "required": ["status", "failing", "checks"],
}
REPORT = answers("application/json", REPORT_SCHEMA)
LIVE_SCHEMA = {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSources:
    """Where the checks get their facts: the task service (None: no task checks), whether
    a shared broker is set (its reachability is then checked), and the data folder whose
    free space is checked (None: not checked)."""

    tasks: TaskService | None = None
    shared_broker: bool = False
    data_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome: whether it passed, and what it saw (or why it failed)."""

    ok: bool
    detail: dict[str, Any]

    def json(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.detail}


def build_health_router(service: InferenceService, sources: HealthSources) -> APIRouter:
    router = APIRouter(tags=["health"])

    async def report() -> Response:
        checks = await run_checks(service, sources)
        healthy = all(c.ok for c in checks.values())
        body = {
            "status": "ok" if healthy else "failing",
            "failing": [name for name, c in checks.items() if not c.ok],
            "checks": {name: c.json() for name, c in checks.items()},
        }
        return Response(orjson.dumps(body), 200 if healthy else 503, media_type="application/json")

    for path in HEALTH_ROUTES:
        router.add_api_route(
            path,
            report,
            methods=["GET"],
            summary="Health: each check, 200 or 503",
            responses={200: REPORT, 503: {"description": "A check failed", **REPORT}},
        )

    @router.get(
        LIVE_ROUTE,
        summary="Liveness: 200 while the process answers",
        responses={200: answers("application/json", LIVE_SCHEMA)},
    )
    async def live() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return router


async def run_checks(service: InferenceService, sources: HealthSources) -> dict[str, CheckResult]:
    """Every check that applies, by name, run at once."""
    checks: dict[str, Callable[[], Awaitable[CheckResult]]] = {
        "models": lambda: _models(service),
        "serving": lambda: _serving(service),
    }
    tasks = sources.tasks
    if tasks is not None:
        checks["task_store"] = lambda: _reached(tasks.ping_store)
        if sources.shared_broker:
            checks["broker"] = lambda: _reached(tasks.ping_broker)
    if sources.data_dir is not None:
        data_dir = sources.data_dir
        checks["disk"] = lambda: _disk(data_dir)
    results = await asyncio.gather(*(_bounded(check) for check in checks.values()))
    return dict(zip(checks, results, strict=True))


async def _bounded(check: Callable[[], Awaitable[CheckResult]]) -> CheckResult:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await check()
    except TimeoutError:
        return CheckResult(False, {"error": f"no answer within {CHECK_TIMEOUT_S:g} s"})


async def _models(service: InferenceService) -> CheckResult:
    views = service.models()
    loading = [v.name for v in views if v.state is ModelState.LOADING]
    unavailable = {v.name: v.reason for v in views if v.state is ModelState.UNAVAILABLE}
    ready = sum(1 for v in views if v.state is ModelState.READY)
    detail = {"ready": ready, "loading": loading, "unavailable": unavailable}
    return CheckResult(service.models_loaded(), detail)


async def _serving(service: InferenceService) -> CheckResult:
    if service.draining:
        return CheckResult(False, {"draining": True, "error": "the server is shutting down"})
    return CheckResult(True, {"draining": False})


async def _reached(ping: Callable[[], Awaitable[None]]) -> CheckResult:
    try:
        await ping()
    except Exception as exc:  # whatever the driver raises, it means "not reachable"
        return CheckResult(False, {"error": f"{type(exc).__name__}: {exc}"})
    return CheckResult(True, {})


async def _disk(data_dir: Path) -> CheckResult:
    folder = data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # not made yet: the disk it will be made on
    usage = await asyncio.to_thread(shutil.disk_usage, folder)
    detail = {"path": str(data_dir), "free_bytes": usage.free, "min_free_bytes": MIN_FREE_BYTES}
    return CheckResult(usage.free >= MIN_FREE_BYTES, detail)
