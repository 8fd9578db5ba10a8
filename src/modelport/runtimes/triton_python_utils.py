"""``triton_python_backend_utils``, as a Triton python-backend model imports it.

A model.py written for Triton's python backend does ``import triton_python_backend_utils
as pb_utils``; when the ``python`` runtime loads a model, this module is registered in
``sys.modules`` under that name (``runtimes/triton_python.py``), and nothing else is.
It offers what Triton documents for models that answer one response per request:

- tensors and messages: :class:`Tensor` (``name``, ``as_numpy``, ``triton_dtype``, DLPack),
  :class:`InferenceRequest` (``inputs``, ``requested_output_names``, ``parameters``,
  ``request_id``; ``exec``/``async_exec`` for business logic scripting),
  :class:`InferenceResponse` (``output_tensors``, ``has_error``, ``error``),
  :class:`TritonError` (``message``, ``code``) and :class:`TritonModelException`;
- look-ups: :func:`get_input_tensor_by_name`, :func:`get_output_tensor_by_name`,
  :func:`get_input_config_by_name`, :func:`get_output_config_by_name`;
- types: :func:`triton_string_to_numpy`, :func:`triton_to_numpy_type`,
  :func:`numpy_to_triton_type`, :func:`serialize_byte_tensor`,
  :func:`deserialize_bytes_tensor`;
- :class:`Logger`, whose lines go to the server's log.

BLS requests (``InferenceRequest(...).exec()``) call modelport's served models through
the runtime's :class:`~modelport.core.runtime.ModelCaller`, bound to the thread running
``execute``; decoupled models (response senders) are not offered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import numpy as np

from modelport.core.runtime import ModelCaller
from modelport.errors import (
    Cancelled,
    Conflict,
    ErrorKind,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    Unsupported,
)

log = logging.getLogger("modelport.triton_python")

# Triton's data types by their model-configuration names, as numpy types.
TRITON_STRING_TO_NUMPY: dict[str, type[Any]] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# TRITONSERVER_DataType's values (what Tensor.triton_dtype answers), as numpy types.
_TRITON_TYPES: dict[int, type[Any]] = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
}
_BYTES_TYPE = 13

# Flags Triton's models may name; modelport serves no sequences or decoupled models,
# so they are only accepted where Triton accepts them.
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


def triton_string_to_numpy(triton_type_string: str) -> type[Any]:
    """The numpy type of a configuration's ``data_type`` ("TYPE_FP32" -> np.float32)."""
    try:
        return TRITON_STRING_TO_NUMPY[triton_type_string]
    except KeyError:
        raise TritonModelException(
            f"unknown data_type {triton_type_string!r}; expected one of "
            f"{', '.join(TRITON_STRING_TO_NUMPY)}"
        ) from None


def triton_to_numpy_type(data_type: int) -> type[Any] | None:
    """The numpy type of a TRITONSERVER_DataType value, None for one it does not know."""
    return _TRITON_TYPES.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The TRITONSERVER_DataType value of a numpy type (str and bytes are BYTES)."""
    dtype = np.dtype(data_type)
    if dtype.kind in ("O", "S"):
        return _BYTES_TYPE
    for value, numpy_type in _TRITON_TYPES.items():
        if dtype == np.dtype(numpy_type):
            return value
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray | None:
    """A BYTES tensor as Triton's wire form: each element's 4-byte little-endian length,
    then its bytes, in C order, as a uint8 array (None for an empty tensor)."""
    if input_tensor.size == 0:
        return None
    if input_tensor.dtype.kind not in ("O", "S"):
        raise TritonModelException(
            f"cannot serialize a tensor of {input_tensor.dtype} as BYTES; "
            "use an np.object_ array of bytes"
        )
    parts = []
    for item in input_tensor.flat:
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """Triton's wire form of a BYTES tensor back to a 1-D np.object_ array of bytes."""
    items: list[bytes] = []
    data = bytes(encoded_tensor)
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        items.append(data[offset : offset + length])
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


class TritonError:
    """An error for one response (``InferenceResponse(error=TritonError("..."))``): it
    fails that request alone. ``code`` is one of the class's constants (INTERNAL by
    default) and decides the status the client gets."""

    UNKNOWN: ClassVar[int] = 0
    INTERNAL: ClassVar[int] = 1
    NOT_FOUND: ClassVar[int] = 2
    INVALID_ARG: ClassVar[int] = 3
    UNAVAILABLE: ClassVar[int] = 4
    UNSUPPORTED: ClassVar[int] = 5
    ALREADY_EXISTS: ClassVar[int] = 6
    CANCELLED: ClassVar[int] = 7

    def __init__(self, message: str, code: int = 1) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class TritonModelException(Exception):
    """What a model raises from ``initialize``, ``execute`` or ``finalize`` to fail it
    with a message of its own."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def message(self) -> str:
        return self._message


# TritonError codes and the modelport errors they become, both ways.
_BY_CODE: dict[int, type[ModelportError]] = {
    TritonError.NOT_FOUND: ModelNotFound,
    TritonError.INVALID_ARG: InvalidInput,
    TritonError.UNAVAILABLE: ModelUnavailable,
    TritonError.UNSUPPORTED: Unsupported,
    TritonError.ALREADY_EXISTS: Conflict,
    TritonError.CANCELLED: Cancelled,
}
_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.NOT_FOUND: TritonError.NOT_FOUND,
    ErrorKind.INVALID_INPUT: TritonError.INVALID_ARG,
    ErrorKind.UNAVAILABLE: TritonError.UNAVAILABLE,
    ErrorKind.OVERLOADED: TritonError.UNAVAILABLE,
    ErrorKind.TOO_MANY_REQUESTS: TritonError.UNAVAILABLE,
    ErrorKind.UNSUPPORTED: TritonError.UNSUPPORTED,
    ErrorKind.CONFLICT: TritonError.ALREADY_EXISTS,
    ErrorKind.CANCELLED: TritonError.CANCELLED,
    ErrorKind.DEADLINE_EXCEEDED: TritonError.UNAVAILABLE,
}


def as_modelport_error(error: TritonError) -> ModelportError:
    """The modelport error a response's TritonError fails its request with."""
    return _BY_CODE.get(error.code(), InferenceFailed)(error.message())


def _as_triton_error(error: ModelportError) -> TritonError:
    return TritonError(error.message, _BY_KIND.get(error.kind, TritonError.INTERNAL))


class Tensor:
    """A named array: an input of a request, an output of a response."""

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        array = np.asarray(numpy_array)
        if array.dtype.kind in ("U", "V"):
            raise TritonModelException(
                f"tensor '{name}': numpy dtype {array.dtype} is not supported by the python "
                "backend; use an np.object_ array (of bytes or str) instead"
            )
        if triton_dtype is None:
            triton_dtype = numpy_to_triton_type(array.dtype)
            if triton_dtype is None:
                raise TritonModelException(
                    f"tensor '{name}': numpy dtype {array.dtype} has no Triton data type"
                )
        else:
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is None:
                raise TritonModelException(f"tensor '{name}': unknown data type {triton_dtype}")
            if array.dtype != np.dtype(wanted):
                array = array.view(wanted)  # as Triton does: the same bytes, read as asked
        self._name = name
        self._array = array
        self._triton_dtype = triton_dtype

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def triton_dtype(self) -> int:
        """The TRITONSERVER_DataType value (11 for FP32, 13 for BYTES, ...)."""
        return self._triton_dtype

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True  # inputs and outputs of a python model live in host memory here

    def to_dlpack(self) -> Any:
        """A DLPack capsule of the array, for ``torch.utils.dlpack.from_dlpack``."""
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, dlpack: Any) -> Tensor:
        """A tensor from a DLPack capsule or any object with ``__dlpack__`` (a torch
        tensor); host memory only."""
        source = dlpack if hasattr(dlpack, "__dlpack__") else _Capsule(dlpack)
        return Tensor(name, np.from_dlpack(source))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array.dtype}, shape={list(self._array.shape)})"


class _Capsule:
    """A bare DLPack capsule, wrapped so np.from_dlpack takes it."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


class InferenceResponse:
    """A model's answer to one request: output tensors, or an error that fails that
    request alone."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        if output_tensors is not None and not isinstance(output_tensors, list | tuple):
            raise TritonModelException('"output_tensors" must be a list of pb_utils.Tensor')
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException('"error" must be a pb_utils.TritonError')
        self._tensors = list(output_tensors or [])
        self._error = error
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


# The served models of the model whose ``execute`` this thread (or task) is running.
_CALLER: ContextVar[ModelCaller | None] = ContextVar("triton_python_caller", default=None)


@contextmanager
def models_callable(caller: ModelCaller) -> Iterator[None]:
    """BLS requests made inside the block call models through ``caller``."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


class InferenceRequest:
    """A request: one the model's ``execute`` is given, or one it builds to call another
    served model (business logic scripting) with :meth:`exec` or :meth:`async_exec`."""

    def __init__(
        self,
        *,
        model_name: str = "",
        requested_output_names: Sequence[str] = (),
        inputs: Sequence[Tensor] = (),
        request_id: str = "",
        correlation_id: int | str = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        parameters: Mapping[str, Any] | None = None,
        preferred_memory: Any = None,  # accepted, as Triton's; outputs live in host memory
        trace: Any = None,  # accepted, as Triton's; modelport traces no BLS calls
    ) -> None:
        self._model_name = model_name
        self._requested = list(requested_output_names)
        self._inputs = list(inputs)
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._parameters: dict[str, Any] = dict(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def parameters(self) -> str:
        """The request's parameters as a JSON string (``json.loads`` it)."""
        return json.dumps(self._parameters)

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def is_cancelled(self) -> bool:
        return False  # a request whose client gave up is dropped before execute

    def get_response_sender(self) -> Any:
        raise TritonModelException(
            "decoupled models (response senders) are not supported by modelport; return "
            "one InferenceResponse per request from execute"
        )

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on the served model it names and wait for its response; an
        inference error comes back as the response's error, not raised."""
        caller = _CALLER.get()
        if caller is None:
            raise TritonModelException(
                "BLS requests can only be made while execute runs (not in initialize, "
                "finalize or another thread)"
            )
        return self._exec_with(caller, decoupled)

    async def async_exec(self, decoupled: bool = False) -> InferenceResponse:
        """:meth:`exec` as an awaitable, for ``async def execute``: several can be in
        flight at once (``asyncio.gather``)."""
        caller = _CALLER.get()
        if caller is None:
            raise TritonModelException("BLS requests can only be made while execute runs")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._exec_with, caller, decoupled)

    def _exec_with(self, caller: ModelCaller, decoupled: bool) -> InferenceResponse:
        if decoupled:
            raise TritonModelException("decoupled BLS requests are not supported by modelport")
        if not self._model_name:
            raise TritonModelException("a BLS request needs a model_name")
        if self._parameters:
            raise TritonModelException(
                "BLS request parameters are not passed on by modelport; leave them out"
            )
        inputs = {t.name(): t.as_numpy() for t in self._inputs}
        version = str(self._model_version) if self._model_version >= 0 else ""
        try:
            outputs = caller.infer(self._model_name, inputs, version)
        except ModelportError as exc:
            return InferenceResponse(error=_as_triton_error(exc))
        names = self._requested or list(outputs)
        missing = [n for n in names if n not in outputs]
        if missing:
            return InferenceResponse(
                error=TritonError(
                    f"model '{self._model_name}' has no output(s) {missing}; its outputs "
                    f"are {sorted(outputs)}",
                    TritonError.INVALID_ARG,
                )
            )
        return InferenceResponse([Tensor(n, outputs[n]) for n in names])

    def __repr__(self) -> str:
        return f"InferenceRequest(model_name={self._model_name!r}, inputs={self._inputs})"


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input ``name``, or None."""
    return next((t for t in inference_request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output ``name``, or None."""
    return next((t for t in inference_response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry of a parsed model configuration named ``name``, or None."""
    return next((t for t in model_config.get("input", ()) if t["name"] == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry of a parsed model configuration named ``name``, or None."""
    return next((t for t in model_config.get("output", ()) if t["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    """Whether the configuration asks for decoupled responses (never, on modelport)."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class Logger:
    """Log lines from a model, into the server's log (``pb_utils.Logger.log_info(...)``)."""

    INFO: ClassVar[int] = 0
    WARNING: ClassVar[int] = 1
    ERROR: ClassVar[int] = 2
    VERBOSE: ClassVar[int] = 3
    _LEVELS: ClassVar[dict[int, int]] = {
        0: logging.INFO,
        1: logging.WARNING,
        2: logging.ERROR,
        3: logging.DEBUG,
    }

    @classmethod
    def log(cls, message: str, level: int = 0) -> None:
        log.log(cls._LEVELS.get(level, logging.INFO), "%s", message)

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, cls.INFO)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, cls.WARNING)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, cls.ERROR)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, cls.VERBOSE)
