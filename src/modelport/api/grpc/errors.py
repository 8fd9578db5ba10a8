"""ErrorKind -> gRPC status code, and aborting a call with a core error."""

from __future__ import annotations

import grpc

from modelport.errors import ErrorKind, ModelportError, RetryLater

STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.INVALID_SPEC: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

# Trailing metadata on RESOURCE_EXHAUSTED: seconds to wait before retrying, as the
# HTTP API's Retry-After header.
RETRY_AFTER = "retry-after"


def error_trailers(exc: ModelportError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata a call ending with ``exc`` carries besides its status:
    ``retry-after`` in whole seconds (at least one) for a :class:`RetryLater`."""
    if isinstance(exc, RetryLater):
        return ((RETRY_AFTER, str(max(1, round(exc.retry_after)))),)
    return ()


async def abort(context: grpc.aio.ServicerContext, exc: ModelportError) -> None:
    """End the call with the status of ``exc``'s kind and its message (never returns)."""
    trailers = error_trailers(exc)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(STATUS[exc.kind], exc.message)
