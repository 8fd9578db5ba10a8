"""ErrorKind -> HTTP status, and the ``{"error": "..."}`` body every route answers with."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Response

from modelport.errors import ErrorKind, ModelportError, RetryLater, Unauthenticated

STATUS: dict[ErrorKind, int] = {
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.INVALID_INPUT: 400,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.UNSUPPORTED: 501,
    ErrorKind.INVALID_SPEC: 400,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.TOO_MANY_REQUESTS: 429,
    ErrorKind.CANCELLED: 499,  # nginx's "client closed request": nobody reads it
    ErrorKind.DEADLINE_EXCEEDED: 504,
    ErrorKind.INTERNAL: 500,
}


def error_parts(exc: ModelportError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, JSON body and extra headers for a core error."""
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(exc, RetryLater):
        # Whole seconds, at least one: Retry-After takes no fractions, and 0 invites a storm.
        headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    elif isinstance(exc, Unauthenticated):
        headers.append((b"www-authenticate", b'Bearer realm="modelport"'))
    return STATUS[exc.kind], orjson.dumps({"error": exc.message}), headers


def error_response(exc: ModelportError, extra: Mapping[str, Any] | None = None) -> Response:
    """A framework response for a core error (the routes outside the fast path): the
    app's one handler answers with it; a compat API whose body has fields of its own
    besides ``error`` passes them as ``extra``."""
    status, body, headers = error_parts(exc)
    if extra:
        body = orjson.dumps({**extra, "error": exc.message})
    response = Response(body, status, media_type="application/json")
    for key, value in headers:
        response.headers[key.decode()] = value.decode()
    return response


# The body of every error answer, as the OpenAPI document shows it.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what went wrong"}},
    "required": ["error"],
}


def error_responses(
    *statuses: int, body: dict[str, Any] = ERROR_SCHEMA
) -> dict[int | str, dict[str, Any]]:
    """What a route's ``responses=`` lists for the error statuses it may answer, each with
    the ``{"error": ...}`` body (``body``: a compat API's own), so the OpenAPI document
    (and clients generated from it) know them."""
    return {
        status: {
            "description": _phrase(status),
            "content": {"application/json": {"schema": body}},
        }
        for status in statuses
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a compat API's own code (the zip-task cluster server's 55x)
        return f"HTTP {status}"
