"""Errors that know nothing of the transport.

Every failure modelport reports to a client is a :class:`ModelportError` carrying an
:class:`ErrorKind`. The HTTP and gRPC adapters each map the kind to their own status
(``api/http/errors.py``, ``api/grpc/errors.py``); nothing below them knows a status code.

Exception tree::

    ModelportError
    ├── ModelNotFound        NOT_FOUND    unknown model or version
    ├── InvalidInput         INVALID_INPUT a request that cannot be run as sent
    ├── ModelUnavailable     UNAVAILABLE  known, but not loaded or failed to load
    ├── RetryLater           OVERLOADED   busy now: retry after ``retry_after`` seconds
    │   ├── Overloaded       OVERLOADED   the model's queue is full
    │   └── TooManyRequests  TOO_MANY_REQUESTS  an API key's limit of calls in progress
    ├── Unsupported          UNSUPPORTED  a feature this server does not offer
    ├── SpecError            INVALID_SPEC a broken model.yaml or model file
    ├── Conflict             CONFLICT     not in a state that allows it (a task's output
    │                                     before it succeeded, cancelling a finished task)
    ├── TooLarge             TOO_LARGE    an upload over its size limit
    ├── Forbidden            FORBIDDEN    an admin call this server does not allow, or an
    │                                     API key without the scope a call needs
    ├── Unauthenticated      UNAUTHENTICATED  no API key, or one that is not valid
    ├── Cancelled            CANCELLED    the client gave up (disconnected, cancelled the
    │                                     call) before its request ran; nobody reads it
    └── InferenceFailed      INTERNAL     the runtime raised while running a batch
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    UNSUPPORTED = "unsupported"
    INVALID_SPEC = "invalid_spec"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    FORBIDDEN = "forbidden"
    UNAUTHENTICATED = "unauthenticated"
    TOO_MANY_REQUESTS = "too_many_requests"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class ModelportError(Exception):
    """Base of every error modelport reports; ``kind`` decides the status code."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(ModelportError):
    """No such model, version or label (a pipeline calling a model that is not there)."""

    kind = ErrorKind.NOT_FOUND


class InvalidInput(ModelportError):
    """The request cannot be run as sent; a runtime raises it for inputs its model
    refuses (the client's fault, so the message should say what to send instead)."""

    kind = ErrorKind.INVALID_INPUT


class ModelUnavailable(ModelportError):
    """The model is known but cannot answer now: not loaded, failed to load, or a
    resource it needs (a GPU, a remote server) is away."""

    kind = ErrorKind.UNAVAILABLE


class RetryLater(ModelportError):
    """Busy now, not broken: the client may send the same call again after
    ``retry_after`` seconds (a hint). Each transport turns the hint into its own form
    (HTTP's Retry-After header, gRPC's ``retry-after`` trailer), in one place."""

    kind = ErrorKind.OVERLOADED

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(RetryLater):
    """The model's queue is full (or a remote server said it is busy)."""

    kind = ErrorKind.OVERLOADED


class Unsupported(ModelportError):
    """A feature this server (or this runtime) does not offer."""

    kind = ErrorKind.UNSUPPORTED


class SpecError(ModelportError):
    """A model.yaml or model file that cannot be used; the message names file and field."""

    kind = ErrorKind.INVALID_SPEC


class Conflict(ModelportError):
    """Not in a state that allows the call (a task's output before it succeeded)."""

    kind = ErrorKind.CONFLICT


class TooLarge(ModelportError):
    """An upload over its size limit."""

    kind = ErrorKind.TOO_LARGE


class InferenceFailed(ModelportError):
    """The runtime failed while running a batch: the server's fault, not the client's.
    Any other exception a runtime raises is reported as this one."""

    kind = ErrorKind.INTERNAL


class Forbidden(ModelportError):
    """An admin call (load, unload, model posting) that this server's settings refuse,
    or an API key without the scope the call needs."""

    kind = ErrorKind.FORBIDDEN


class Unauthenticated(ModelportError):
    """A call that needs an API key came with none, or with one that is not valid."""

    kind = ErrorKind.UNAUTHENTICATED


class TooManyRequests(RetryLater):
    """An API key has its limit of calls in progress."""

    kind = ErrorKind.TOO_MANY_REQUESTS


class Cancelled(ModelportError):
    """The client gave up on a request before it ran (an HTTP connection closed, a gRPC
    call cancelled): it was dropped from the queue. Counted, never answered."""

    kind = ErrorKind.CANCELLED


class DeadlineExceeded(ModelportError):
    """A request's deadline (v2 ``timeout`` parameter, ``Request-Timeout`` header, gRPC
    deadline) passed while it waited in the queue: it was dropped, never run."""

    kind = ErrorKind.DEADLINE_EXCEEDED
