"""The HTTP application: FastAPI for every route, behind the infer fast path
(``fastpath.py``) for ``POST /v2/models/{m}[/versions/{v}]/infer``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import ClientDisconnect

from modelport.api.http.asgi import ASGIApp, SecurityHeaders, TagRequests
from modelport.api.http.compat.inference_server import build_inference_server_router
from modelport.api.http.compat.tfserving import build_tfserving_router
from modelport.api.http.config import Listener, build_config_router
from modelport.api.http.docs import add_docs
from modelport.api.http.errors import error_response
from modelport.api.http.fastpath import InferFastPath, failures
from modelport.api.http.health import HealthSources, build_health_router
from modelport.api.http.limits import BodyLimit
from modelport.api.http.openapi import DocumentedApp, answers, key_refusals
from modelport.api.http.predict import build_predict_router
from modelport.api.http.shared_memory import build_shared_memory_router
from modelport.api.http.tasks import PREFIX as TASKS_PREFIX
from modelport.api.http.tasks import TaskRoutes, build_tasks_router
from modelport.api.http.v2 import InferHandler, build_router
from modelport.api.http.web import build_web_router
from modelport.api.http.workers import build_workers_router
from modelport.core.service import InferenceService
from modelport.errors import InvalidInput, ModelportError


def create_app(
    service: InferenceService,
    *,
    metrics: CollectorRegistry,
    max_body: int,
    tasks: TaskRoutes | None = None,
    metrics_text: Callable[[], Awaitable[bytes]] | None = None,
    health: HealthSources | None = None,
    listeners: Sequence[Listener] = (),
) -> tuple[FastAPI, ASGIApp]:
    """The FastAPI app (for tests that want it) and the ASGI app to serve; ``tasks``
    adds the tasks API (and the zip-task cluster server's); ``health`` is what
    ``/health`` checks besides the models; ``listeners`` are what ``/api/v1/config``
    lists."""
    app = DocumentedApp(
        title="modelport",
        version=service.version,
        description="KServe v2 inference, a model repository, metrics.",
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)
    refusals = key_refusals()  # every route below may be refused them (keys, admin calls)
    app.include_router(build_router(service, max_body), responses=refusals)
    app.include_router(build_health_router(service, health or HealthSources()), responses=refusals)
    app.include_router(build_config_router(service, listeners), responses=refusals)
    app.include_router(build_tfserving_router(service), responses=refusals)
    if tasks is not None:
        _include_task_routes(app, tasks)
    app.include_router(build_predict_router(service, max_body), responses=refusals)
    app.include_router(build_shared_memory_router(service), responses=refusals)
    app.include_router(build_web_router())

    @app.exception_handler(ModelportError)
    async def core_error(request: Request, exc: ModelportError) -> Response:
        response = error_response(exc)  # a core error a route did not catch itself
        if response.status_code >= 500:  # logged as the fast path logs its own
            failures.failed(
                str(request.path_params.get("model", "")),
                exc.kind.value,
                "%s %s failed with %d: %s",
                request.method,
                request.url.path[:200],
                response.status_code,
                exc.message[:300],
            )
        return response

    @app.exception_handler(RequestValidationError)
    async def unreadable_parameters(request: Request, exc: RequestValidationError) -> Response:
        # A query parameter of the wrong type is a bad request like any other: 400 with
        # {"error": ...}, not the framework's own 422 body.
        return error_response(InvalidInput(validation_message(exc)))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody reads this: the client left, or BodyLimit answered 413 already.
        return Response(status_code=499)

    @app.get(
        "/metrics",
        tags=["observability"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: answers("text/plain", {"type": "string"}), **refusals},
    )
    async def metrics_route() -> Response:
        if metrics_text is not None:  # several server processes: all of them
            return Response(await metrics_text(), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    # Task uploads have a limit of their own (task_max_upload_bytes).
    exempt: tuple[str, ...] = ()
    if tasks is not None:
        exempt = tuple(p for p in (TASKS_PREFIX, tasks.compat_prefix) if p)
    # Every request's id: TagRequests for the routes, the fast path for infer requests.
    limited = BodyLimit(TagRequests(app), max_body, exempt)
    served = SecurityHeaders(limited)
    return app, InferFastPath(served, InferHandler(service, max_body), max_body)


def _include_task_routes(app: FastAPI, routes: TaskRoutes) -> None:
    """The tasks API, and the zip-task cluster server's API when it has a prefix."""
    refusals = key_refusals()
    app.include_router(build_tasks_router(routes), responses=refusals)
    app.include_router(build_workers_router(routes.workers), responses=refusals)
    if routes.compat_prefix:
        # On the main port the key middleware answers in modelport's {"error": ...}.
        router = build_inference_server_router(routes, routes.compat_prefix)
        app.include_router(router, responses=refusals)


def validation_message(exc: RequestValidationError) -> str:
    """The framework's validation errors in a line: where, and what was wrong."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
        for error in exc.errors()
    )
