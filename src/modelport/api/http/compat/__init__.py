"""Other servers' APIs, kept working for their existing clients.

TF Serving's REST API is on the main port (``tfserving.py``). APIs whose clients build
absolute paths are served at the root of a listener of their own (``--compat
NAME=[HOST:]PORT``): :data:`COMPAT_APIS` names them, and ``server/listeners.py`` serves
each one asked for. Adding one is a module here with an app factory, and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from modelport.api.http.auth import ErrorParts, RouteNeed
from modelport.api.http.compat import ablinfer, inference_server
from modelport.api.http.tasks import TaskRoutes
from modelport.core.service import InferenceService
from modelport.errors import ModelUnavailable
from modelport.tasks.ablinfer_sessions import AblinferSessions


@dataclass(frozen=True, slots=True, kw_only=True)
class CompatParts:
    """What a compat API's app is built over: the same core and task queue as the main
    port's; ``tasks`` are the task routes of its listener (its host's access rules)."""

    service: InferenceService
    tasks: TaskRoutes
    ablinfer: AblinferSessions | None = None  # with --ablinfer-models or an ablinfer listener


@dataclass(frozen=True, slots=True, kw_only=True)
class CompatApi:
    """An upstream API served at the root of a listener: its app, what each of its routes
    needs (scopes, ``server/listeners.py`` asks the guard) and its error shape."""

    build: Callable[[CompatParts], FastAPI]
    route_need: RouteNeed
    errors: ErrorParts
    description: str
    # Paths whose bodies are uploads, limited by task_max_upload_bytes, not max_request_bytes.
    upload_paths: tuple[str, ...] = ()


COMPAT_APIS: dict[str, CompatApi] = {
    "inference-server": CompatApi(
        build=lambda parts: inference_server.build_inference_server_app(
            parts.tasks, version=parts.service.version
        ),
        route_need=inference_server.route_need,
        errors=inference_server.error_parts_upstream,
        description="the zip-task cluster server's API (inference_server_client)",
        upload_paths=("/api/tasks", "/api/models"),
    ),
    "ablinfer": CompatApi(
        build=lambda parts: ablinfer.build_ablinfer_app(_sessions(parts)),
        route_need=ablinfer.route_need,
        errors=ablinfer.error_parts_upstream,
        description="ABLInfer's InferServer (3D Slicer's ABLInfer module, ablinfer.remote)",
        upload_paths=("/sessions",),
    ),
}


def _sessions(parts: CompatParts) -> AblinferSessions:
    if parts.ablinfer is None:  # serve builds them whenever an ablinfer listener is asked
        raise ModelUnavailable("the ablinfer listener has no sessions")
    return parts.ablinfer
