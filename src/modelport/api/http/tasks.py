"""The tasks API: submit a job (files in), follow it, fetch its output zip and its logs.

``POST /api/tasks`` (multipart: ``model``, optional ``version``, optional JSON
``parameters``, one zip or several files) answers 202 with the task and its links;
``GET /api/tasks/{id}``, ``GET /api/tasks/{id}/output`` (a zip), ``GET
/api/tasks/{id}/logs`` (streamed while it runs; ``?follow=false`` for what there is),
``DELETE /api/tasks/{id}`` (cancel), ``GET /api/tasks?model=&status=&limit=&offset=``.
Errors are ``{"error": "..."}``: 404 unknown task or model, 400 a model that is not a
container model or a bad zip, 409 no output (yet), 413 an upload over the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from modelport.api.http.errors import error_responses
from modelport.api.http.openapi import answers
from modelport.api.http.uploads import read_form
from modelport.api.http.workers import WorkerLister
from modelport.errors import Forbidden, InvalidInput
from modelport.supply.allow_lists import AllowList
from modelport.tasks.records import TaskRecord, TaskStatus
from modelport.tasks.service import TaskService
from modelport.tasks.spool import Spool

PREFIX = "/api/tasks"
NO_IMAGES = AllowList((), "model_images")
# What POST /api/tasks takes, as the OpenAPI document shows it.
SUBMISSION_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "a container model"},
        "version": {"type": "string", "description": "its version (default: the latest)"},
        "parameters": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "a JSON object, given to the container",
        },
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "one zip, or the input files (any field name)",
        },
    },
    "required": ["model"],
}
BINARY = {"type": "string", "format": "binary"}
SUBMISSION = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": SUBMISSION_FORM}},
    }
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRoutes:
    """What the HTTP app needs to serve tasks: the service, where uploads are spooled,
    and the upload and compat settings (``model_images``: the images clients may post as
    models)."""

    service: TaskService
    spool: Spool
    max_upload_bytes: int
    compat_prefix: str = ""
    allow_model_posting: bool = False
    model_images: AllowList = NO_IMAGES
    workers: WorkerLister | None = None  # GET /api/workers, with a Redis broker
    # Why task calls are refused (auth = off on a network address without tasks_open);
    # with keys possible the guard refuses them instead.
    refusal: str = ""

    def check_open(self) -> None:
        """Forbidden when task calls are refused here (a route dependency)."""
        if self.refusal:
            raise Forbidden(self.refusal)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def task_json(record: TaskRecord) -> dict[str, Any]:
    base = f"{PREFIX}/{record.id}"
    return {
        **record.to_json(),
        "links": {"self": base, "output": f"{base}/output", "logs": f"{base}/logs"},
    }


def parse_parameters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"'parameters' is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return value


def parse_statuses(text: str | None) -> list[TaskStatus]:
    names = [s for s in (text or "").split(",") if s]
    try:
        return [TaskStatus(s) for s in names]
    except ValueError:
        known = ", ".join(s.value for s in TaskStatus)
        raise InvalidInput(f"status is one or more of {known}, got '{text}'") from None


async def output_response(tasks: TaskService, task_id: str) -> Response:
    """The output zip, streamed from the file the service opened before this answers."""
    output = await tasks.open_output(task_id)
    headers = {
        "content-disposition": f'attachment; filename="{task_id}-output.zip"',
        "content-length": str(output.size),
    }
    return StreamingResponse(output.chunks, headers=headers, media_type="application/zip")


def build_tasks_router(routes: TaskRoutes) -> APIRouter:
    """The tasks API; a ModelportError a route raises is the app's handler's to answer."""
    tasks = routes.service
    router = APIRouter(prefix=PREFIX, tags=["tasks"], dependencies=[Depends(routes.check_open)])

    @router.post(
        "",
        status_code=202,
        summary="Submit a task: a zip or files, for a model",
        openapi_extra=SUBMISSION,
        responses=error_responses(400, 404, 413, 503),
    )
    async def submit(request: Request) -> Response:
        async with read_form(request, limit=routes.max_upload_bytes, spool=routes.spool) as form:
            model = form.fields.get("model", "")
            if not model:
                raise InvalidInput("the form needs a 'model' field")
            record = await tasks.submit(
                model,
                form.all_files(),
                parameters=parse_parameters(form.fields.get("parameters")),
                version=form.fields.get("version", ""),
                traceparent=request.headers.get("traceparent", ""),
            )
        return _json(task_json(record), 202, {"location": f"{PREFIX}/{record.id}"})

    @router.get("", summary="List tasks, newest first", responses=error_responses(400))
    async def list_tasks(
        *, model: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> Response:
        page = await tasks.list_tasks(
            model, statuses=parse_statuses(status), limit=limit, offset=offset
        )
        following = page.offset + len(page.tasks)
        query = "&".join(
            f"{k}={v}" for k, v in (("model", model), ("status", status)) if v is not None
        )
        next_link = (
            f"{PREFIX}?{query + '&' if query else ''}limit={limit}&offset={following}"
            if following < page.total
            else None
        )
        return _json(
            {
                "tasks": [task_json(r) for r in page.tasks],
                "total": page.total,
                "limit": page.limit,
                "offset": page.offset,
                "next": next_link,
            }
        )

    @router.get("/{task_id}", summary="A task's status", responses=error_responses(404))
    async def get_task(task_id: str) -> Response:
        return _json(task_json(await tasks.get(task_id)))

    @router.get(
        "/{task_id}/output",
        summary="A succeeded task's output zip",
        response_class=Response,
        responses={200: answers("application/zip", BINARY), **error_responses(404, 409)},
    )
    async def get_output(task_id: str) -> Response:
        return await output_response(tasks, task_id)

    @router.get(
        "/{task_id}/logs",
        summary="A task's container log, streamed while it runs",
        response_class=Response,
        responses={200: answers("text/plain", {"type": "string"}), **error_responses(400, 404)},
    )
    async def get_logs(task_id: str, follow: bool = True) -> Response:
        await tasks.get(task_id)  # an unknown task is a 404, before the stream starts
        return StreamingResponse(tasks.logs(task_id, follow), media_type="text/plain")

    @router.delete(
        "/{task_id}",
        summary="Cancel a task (its container is stopped)",
        responses=error_responses(404, 409),
    )
    async def cancel(task_id: str) -> Response:
        return _json(task_json(await tasks.cancel(task_id)))

    return router
