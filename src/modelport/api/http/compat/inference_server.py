"""The zip-task cluster server's API (InferenceServer v1), for its clients unchanged.

Its client (``inference_server_client``) joins absolute paths onto its base URL, so the
API is served at the root of a listener of its own (``--compat inference-server=8123``,
``server/listeners.py``); it is also under the ``compat_inference_server`` prefix of the
main port for scripts that build URLs by concatenating strings. Scalars come as query
or form fields, files as multipart parts:

- ``GET /``: ``{"message": "Hello world - ..."}``.
- ``POST /api/models/`` (``container_tag``, ``human_readable_id``, ``description``,
  ``model_available``, ``use_gpu``; file ``zip_file``, the ``/model`` files, exactly when
  ``model_available`` is true) adds a container model; only when the operator allows it
  (``compat_allow_model_posting``, ``model_images``; else 405 or 403) and with the admin
  scope. ``human_readable_id`` is any non-empty string that fits a path segment.
- ``GET /api/models/`` lists the container models.
- ``POST /api/tasks/`` (``model_human_readable_id``, file ``zip_file``) answers the task's
  uid as a JSON string; 550 ``{"detail": "ModelNotFound"}`` for an unknown model.
- ``GET /api/tasks/{uid}``: the output zip (200; an empty zip when the container left
  ``/output`` empty) once finished; else 551 pending or running, 552 failed (or
  cancelled), 553 finished without output (removed after the retention time), 554 no
  such task, each ``{"detail": {"detail": "..."}}`` as upstream relays them.
- ``DELETE /api/tasks/{uid}`` cancels the task if needed and deletes it.

Other errors are upstream's FastAPI shape ``{"detail": ...}``: 422 for a missing field
(FastAPI's list of ``{type, loc, msg, input}``), 400 bad input (a non-zip, zip slip, a
bomb), 401/403 access, 409 a model that exists, 413 an upload over the limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute

from modelport.api.http.docs import DOCS_PATH, add_docs
from modelport.api.http.errors import ERROR_SCHEMA, error_parts, error_responses
from modelport.api.http.openapi import DocumentedApp, Responses, answers, key_refusals
from modelport.api.http.tasks import TaskRoutes, output_response
from modelport.api.http.uploads import Form, read_form
from modelport.errors import Conflict, InvalidInput, ModelNotFound, ModelportError, Unauthenticated
from modelport.security.access import Need
from modelport.tasks.container_models import ContainerModel
from modelport.tasks.records import TaskStatus
from modelport.tasks.service import TaskNotFound, Upload

PENDING, FAILED, NO_OUTPUT, NOT_FOUND, MODEL_NOT_FOUND = 551, 552, 553, 554, 550
HELLO = {"message": "Hello world - Welcome to the public database API"}
PAGE_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Its answers' shapes, for the OpenAPI document: FastAPI's {"detail": ...} for errors
# (a list for 422, as FastAPI words a missing field), {"detail": {"detail": ...}} for
# the codes relayed from upstream's private API, and a model as its database row.
_TEXT, _FLAG = {"type": "string"}, {"type": "boolean"}
DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
FIELD_ERRORS = {
    "type": "object",
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "input": {},
                },
                "required": ["type", "loc", "msg"],
            },
        }
    },
    "required": ["detail"],
}
RELAYED = {
    "type": "object",
    "properties": {"detail": DETAIL},
    "required": ["detail"],
}
MODEL_ROW = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "uid": {"type": "string"},
        "human_readable_id": {"type": "string"},
        "description": {"type": ["string", "null"]},
        "container_tag": {"type": "string"},
        "use_gpu": {"type": "boolean"},
        "model_available": {"type": "boolean"},
        "model_volume_id": {"type": ["string", "null"]},
        "model_zip": {"type": "null"},
    },
    "required": ["uid", "human_readable_id", "container_tag"],
}
_ZIP = {"type": "string", "format": "binary"}
HELLO_SCHEMA = {"type": "object", "properties": {"message": _TEXT}, "required": ["message"]}


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _form(**fields: dict[str, Any]) -> dict[str, Any]:
    """A body of the query's fields again (taken from the form too), and files."""
    schema = {"type": "object", "properties": fields}
    return {"requestBody": {"content": {"multipart/form-data": {"schema": schema}}}}


POST_MODEL = {
    "parameters": [
        _query("container_tag", _TEXT, required=True),
        _query("human_readable_id", {"type": "string", "minLength": 1}, required=True),
        _query("description", _TEXT),
        _query("model_available", _FLAG),
        _query("use_gpu", _FLAG),
    ],
    **_form(zip_file=_ZIP),
}
POST_TASK = {
    "parameters": [_query("model_human_readable_id", _TEXT, required=True)],
    **_form(zip_file=_ZIP),
}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _relayed(status: int, detail: str) -> Response:
    """An answer upstream's public API relays from its private one."""
    return _json({"detail": {"detail": detail}}, status)


class FieldErrors(Exception):
    """Fields missing or unparsable, answered 422 as FastAPI answers such parameters."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("bad fields")
        self.errors = errors


def error_parts_upstream(exc: ModelportError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, ``{"detail": ...}`` body and headers for a core error on this API (a client
    that cannot send headers takes a key as HTTP Basic auth, so 401 asks for that)."""
    status, _, headers = error_parts(exc)
    if isinstance(exc, Unauthenticated):
        headers = [(b"www-authenticate", b'Basic realm="modelport"')]
    return status, orjson.dumps({"detail": exc.message}), headers


def route_need(method: str, path: str) -> Need:
    """What a call to this API, at the root of its listener, needs."""
    if path in PAGE_PATHS or path.startswith(DOCS_PATH + "/"):
        return "page"
    return "admin" if method == "POST" and path.startswith("/api/models") else "tasks"


def model_json(model: ContainerModel) -> dict[str, Any]:
    """A container model as the zip-task cluster server shows one (its database row)."""
    return {
        "id": int.from_bytes(hashlib.sha256(model.uid.encode()).digest()[:4]) >> 1,
        "uid": model.uid,
        "human_readable_id": model.name,
        "description": model.description,
        "container_tag": model.image,
        "use_gpu": model.use_gpu,
        "model_available": model.model_files,
        "model_volume_id": model.folder if model.model_files else None,
        "model_zip": None,  # upstream's server path of the zip: never shown here
    }


class _UpstreamErrors(APIRoute):
    """A route of this API: errors in upstream's shape, whichever app serves it (the main
    port's answers ``{"error": ...}`` for its own routes)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except FieldErrors as exc:
                return _json({"detail": exc.errors}, 422)
            except TaskNotFound:
                return _relayed(NOT_FOUND, "Task not found")
            except ModelNotFound:
                return _json({"detail": "ModelNotFound"}, MODEL_NOT_FOUND)
            except ModelportError as exc:
                status, body, headers = error_parts_upstream(exc)
                response = Response(body, status, media_type="application/json")
                for key, value in headers:
                    response.headers[key.decode()] = value.decode()
                return response

        return answer


def _require(form: Form, values: dict[str, str], fields: tuple[str, ...]) -> None:
    """FieldErrors for each of ``fields`` absent (``zip_file`` is a file, the rest
    query parameters, where upstream reads them)."""
    missing = []
    for name in fields:
        absent = not form.files.get(name) if name == "zip_file" else not values.get(name)
        if absent:
            where = "body" if name == "zip_file" else "query"
            missing.append({"type": "missing", "loc": [where, name], "msg": "Field required",
                            "input": None})  # fmt: skip
    if missing:
        raise FieldErrors(missing)


def _flag(values: dict[str, str], name: str) -> bool | None:
    """A boolean field as FastAPI parses one; None when absent."""
    text = values.get(name)
    if text is None or text == "":
        return None
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    why = "Input should be a valid boolean, unable to interpret input"
    raise FieldErrors([{"type": "bool_parsing", "loc": ["query", name], "msg": why,
                          "input": text}])  # fmt: skip


def _model_files(values: dict[str, str], static: Upload | None) -> bool:
    """Whether a /model zip came: ``model_available`` says so, and must agree with it."""
    said = _flag(values, "model_available")
    if said is None:
        return static is not None
    if said and static is None:
        raise InvalidInput("model_available is true but no 'zip_file' (the /model files) came")
    if not said and static is not None:
        raise InvalidInput("a 'zip_file' came but model_available is false; send both or neither")
    return said


def _errors(*statuses: int) -> Responses:
    return error_responses(*statuses, body=DETAIL)


def build_inference_server_router(routes: TaskRoutes, prefix: str = "") -> APIRouter:
    """The API under ``prefix`` ("" at the root of its own listener)."""
    tasks = routes.service
    # A call refused here (task calls without keys, an image not allowed) is answered in
    # this API's shape; under the main port's prefix, its key middleware's refusals are
    # answered in modelport's.
    refused = DETAIL if not prefix else {"anyOf": [DETAIL, ERROR_SCHEMA]}
    router = APIRouter(
        prefix=prefix.rstrip("/"),
        tags=["compat: zip-task cluster server"],
        route_class=_UpstreamErrors,
        responses=error_responses(403, body=refused),
    )

    # Task calls refused where the guard would refuse them, when there is none (auth off).
    checked = [Depends(routes.check_open)]

    @router.get(
        "/",
        summary="Hello world",
        responses={200: answers("application/json", HELLO_SCHEMA)},
    )
    async def hello() -> Response:
        return _json(HELLO)

    @router.post(
        "/api/models/",
        summary="Add a container model (when the operator allows)",
        openapi_extra=POST_MODEL,
        responses={
            200: answers("application/json", MODEL_ROW),
            **_errors(400, 405, 409, 413),
            422: error_responses(422, body=FIELD_ERRORS)[422],
        },
    )
    async def post_model(request: Request) -> Response:
        if not routes.allow_model_posting:
            why = (
                "Method Not Allowed: posting models is off on this server (it needs "
                "compat_allow_model_posting, and admin calls allowed: see the admin setting)"
            )
            return _json({"detail": why}, 405)
        async with read_form(request, limit=routes.max_upload_bytes, spool=routes.spool) as form:
            values = {**request.query_params, **form.fields}
            _require(form, values, ("container_tag", "human_readable_id"))
            static = form.files.get("zip_file", [None])[0]
            model_files = _model_files(values, static)
            use_gpu = _flag(values, "use_gpu")
            routes.model_images.check_image(values["container_tag"], "container_tag")
            model = await tasks.add_container_model(
                ContainerModel(
                    name=values["human_readable_id"],
                    image=values["container_tag"],
                    description=values.get("description") or None,
                    model_files=model_files,
                    use_gpu=bool(use_gpu),
                ),
                static_files=static.path if static is not None else None,
            )
        return _json(model_json(model))

    @router.get(
        "/api/models/",
        summary="List the container models",
        dependencies=checked,
        responses={200: answers("application/json", {"type": "array", "items": MODEL_ROW})},
    )
    async def list_models() -> Response:
        return _json([model_json(m) for m in await tasks.container_models()])

    @router.post(
        "/api/tasks/",
        summary="Submit a zip for a model; answers its uid",
        dependencies=checked,
        openapi_extra=POST_TASK,
        responses={
            200: answers("application/json", {"type": "string"}),
            **_errors(400, 413),
            422: error_responses(422, body=FIELD_ERRORS)[422],
            MODEL_NOT_FOUND: error_responses(MODEL_NOT_FOUND, body=DETAIL)[MODEL_NOT_FOUND],
        },
    )
    async def post_task(request: Request) -> Response:
        async with read_form(request, limit=routes.max_upload_bytes, spool=routes.spool) as form:
            values = {**request.query_params, **form.fields}
            _require(form, values, ("model_human_readable_id", "zip_file"))
            model = await tasks.container_model(values["model_human_readable_id"])
            record = await tasks.submit(
                model.folder, form.files["zip_file"], accept_empty_output=True, zip_only=True
            )
        return _json(record.id)

    @router.get(
        "/api/tasks/{uid}",
        summary="The output zip, or 551..554 while none",
        dependencies=checked,
        response_class=Response,
        responses={
            200: answers("application/zip", _ZIP),
            **error_responses(PENDING, FAILED, NO_OUTPUT, NOT_FOUND, body=RELAYED),
        },
    )
    async def get_task(uid: str) -> Response:
        record = await tasks.get(uid)
        if record.status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            return _relayed(PENDING, f"Task is {record.status.value}")
        if record.status is not TaskStatus.SUCCEEDED:
            why = record.error.splitlines()[0] if record.error else ""
            return _relayed(FAILED, f"Task {record.status.value}" + (f": {why}" if why else ""))
        try:
            return await output_response(tasks, uid)
        except Conflict:  # its files were removed after the retention time
            return _relayed(NO_OUTPUT, "Task finished, but its output zip is gone")

    @router.delete(
        "/api/tasks/{uid}",
        summary="Cancel if needed, and delete a task",
        dependencies=checked,
        responses={
            200: answers("application/json", {"type": "string"}),
            **_errors(409),
            **error_responses(NOT_FOUND, body=RELAYED),
        },
    )
    async def delete_task(uid: str) -> Response:
        await tasks.delete(uid)
        return _json(uid)

    return router


def build_inference_server_app(routes: TaskRoutes, *, version: str) -> FastAPI:
    """The API alone, for the root of a listener of its own (with ``/docs``)."""
    app = DocumentedApp(
        title="InferenceServer public API (modelport)",
        version=version,
        description="The zip-task cluster server's v1 API, served by modelport.",
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)
    # At the root of its own listener, the key middleware answers in this API's shape,
    # asking for HTTP Basic auth (server/listeners.py).
    refusals = key_refusals(DETAIL, scheme="Basic")
    app.include_router(build_inference_server_router(routes), responses=refusals)
    return app
