"""The zip-task cluster server's API, so its clients only change their base address.

Served under a prefix (``compat_inference_server``, default ``/compat/inference-server``):

- ``POST /api/models/`` (form or query: ``container_tag``, ``human_readable_id``,
  ``description``, ``model_available``, ``use_gpu``; optional file ``zip_file`` with the
  static files for ``/model``) adds a container model to the repository; only when
  ``compat_allow_model_posting`` is on and ``model_images`` allows the image, else 403.
- ``GET /api/models/`` lists the container models.
- ``POST /api/tasks/`` (``model_human_readable_id``, file ``zip_file``) answers the task's
  id as a JSON string.
- ``GET /api/tasks/{uid}``: the output zip (200) once finished; else 551 pending or
  running, 552 failed (or cancelled), 553 finished without output (its files were
  removed after the retention time), 554 no such task.
- ``DELETE /api/tasks/{uid}`` cancels the task if needed and deletes it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from modelport.api.http.tasks import TaskRoutes, output_response
from modelport.api.http.uploads import read_form
from modelport.errors import Conflict, Forbidden
from modelport.tasks.container_models import ContainerModel
from modelport.tasks.records import TaskStatus
from modelport.tasks.service import TaskNotFound

PENDING, FAILED, NO_OUTPUT, NOT_FOUND = 551, 552, 553, 554
_TRUE = {"1", "true", "yes", "on"}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def model_json(model: ContainerModel) -> dict[str, Any]:
    """A container model as the zip-task cluster server shows one."""
    return {
        "human_readable_id": model.name,
        "container_tag": model.image,
        "description": model.description,
        "model_available": model.available,
        "use_gpu": model.use_gpu,
    }


class _UpstreamErrors(APIRoute):
    """A route of this API: an unknown task is the upstream server's 554; every other
    core error is the app's handler's (``{"error": ...}`` with the usual status)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except TaskNotFound as exc:
                return _json({"error": exc.message}, NOT_FOUND)

        return answer


def build_inference_server_router(routes: TaskRoutes) -> APIRouter:
    """The API under ``routes.compat_prefix``."""
    tasks = routes.service
    router = APIRouter(
        prefix=routes.compat_prefix.rstrip("/"),
        tags=["compat: zip-task cluster server"],
        route_class=_UpstreamErrors,
    )

    @router.post("/api/models/", summary="Add a container model (when the operator allows)")
    async def post_model(request: Request) -> Response:
        if not routes.allow_model_posting:
            raise Forbidden(
                "posting models is off on this server: it needs "
                "compat_allow_model_posting, and admin calls allowed (see the admin setting)"
            )
        async with read_form(request, limit=routes.max_upload_bytes, spool=routes.spool) as form:
            values = {**request.query_params, **form.fields}
            static = form.files.get("zip_file", [None])[0]
            image = values.get("container_tag", "")
            if image:  # a missing image is the service's 400
                routes.model_images.check_image(image, "image")
            model = await tasks.add_container_model(
                ContainerModel(
                    name=values.get("human_readable_id", ""),
                    image=image,
                    description=values.get("description", ""),
                    available=values.get("model_available", "true").lower() in _TRUE,
                    use_gpu=values.get("use_gpu", "false").lower() in _TRUE,
                ),
                static_files=static.path if static is not None else None,
            )
        return _json(model_json(model))

    @router.get("/api/models/", summary="List the container models")
    async def list_models() -> Response:
        return _json([model_json(m) for m in await tasks.container_models()])

    @router.post("/api/tasks/", summary="Submit a zip for a model; answers the task id")
    async def post_task(request: Request) -> Response:
        async with read_form(request, limit=routes.max_upload_bytes, spool=routes.spool) as form:
            values = {**request.query_params, **form.fields}
            model = values.get("model_human_readable_id", "")
            await tasks.require_available(model)
            record = await tasks.submit(model, form.files.get("zip_file", []))
        return _json(record.id)

    @router.get("/api/tasks/{uid}", summary="The output zip, or 551..554 while there is none")
    async def get_task(uid: str) -> Response:
        record = await tasks.get(uid)
        if record.status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            return _json({"status": record.status.value}, PENDING)
        if record.status is not TaskStatus.SUCCEEDED:
            return _json({"status": record.status.value, "error": record.error}, FAILED)
        try:
            return await output_response(tasks, uid)
        except Conflict as exc:  # its files were removed after the retention time
            return _json({"status": record.status.value, "error": exc.message}, NO_OUTPUT)

    @router.delete("/api/tasks/{uid}", summary="Cancel if needed, and delete a task")
    async def delete_task(uid: str) -> Response:
        await tasks.delete(uid)
        return _json(uid)

    return router
