"""KServe v2 over gRPC: ``inference.GRPCInferenceService``, served by the one core.

Every method has the shape of the HTTP routes: parse the message, call
:class:`~modelport.core.service.InferenceService`, encode the answer, and map a
:class:`~modelport.errors.ModelportError` to its status (``api/grpc/errors.py``).

Routing by ``model-id``
    A call carrying ``model-id`` metadata goes to that model, whatever the message's
    own model name field says (``model_name`` of ModelInfer and ModelStreamInfer,
    ``name`` of ModelReady, ModelMetadata, ModelConfig and ModelStatistics). So a client
    written for a router in front of one server per model (an nginx routing on the
    ``model-id`` header) keeps working against one modelport. Precedence, highest
    first: ``model-id`` metadata, then the message's field. The version field is still
    the message's. Repository calls (index, load, unload) are not routed: they manage
    the model they name.

ModelStreamInfer
    Requests on one stream run concurrently (so they batch with each other and with
    other clients), up to :data:`STREAM_WINDOW` at a time, and are answered in the order
    they came. A failed request is answered with its ``error_message`` and the stream
    goes on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError

from modelport.api.grpc import convert
from modelport.api.grpc.errors import STATUS, abort
from modelport.core.service import InferenceService
from modelport.core.shared_memory import RegionStatus, refuse_cuda
from modelport.core.tracing import RequestSpan
from modelport.errors import InvalidInput, ModelNotFound, ModelportError, Unsupported
from modelport.protos import grpc_service_pb2 as pb
from modelport.protos import grpc_service_pb2_grpc as pb_grpc

MODEL_ID = "model-id"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
INFER_SPAN = MODEL_INFER.lstrip("/")  # the span's name, as gRPC's semantic conventions say
# The codes a server span counts as its own failure (the others are the caller's).
SERVER_FAULTS = frozenset({"INTERNAL", "UNAVAILABLE", "UNIMPLEMENTED", "DEADLINE_EXCEEDED"})
EXTENSIONS = [
    "model_repository",
    "statistics",
    "model_configuration",
    "parameters",
    "classification",
]
# Requests of one stream in flight at once; past it, the stream is read no further
# until the oldest is answered (HTTP/2 flow control then holds the client back).
STREAM_WINDOW = 64

S = TypeVar("S")
Q = TypeVar("Q")
R = TypeVar("R")
Context: TypeAlias = grpc.aio.ServicerContext


def routed_model(name: str, context: Context) -> str:
    """The model a call is for: its ``model-id`` metadata if any, else ``name``."""
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_ID and value:
            return str(value)
    return name


def maps_errors(
    method: Callable[[S, Q, Context], Coroutine[Any, Any, R]],
) -> Callable[[S, Q, Context], Coroutine[Any, Any, R]]:
    """Turn a core error raised by ``method`` into the call's gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Q, context: Context) -> R:
        try:
            return await method(self, request, context)
        except ModelportError as exc:
            await abort(context, exc)
            raise  # abort raised already; this line only satisfies the type checker

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    # -- health and metadata --------------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready())

    @maps_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        try:
            ready = self.service.model_ready(routed_model(request.name, context), request.version)
        except ModelNotFound:
            ready = False  # as Triton: an unknown model (version) is simply not ready
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.service.name, version=self.service.version, extensions=EXTENSIONS
        )

    @maps_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        meta = self.service.metadata(routed_model(request.name, context), request.version)
        return convert.metadata_response(meta)

    @maps_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        config = self.service.model_config(routed_model(request.name, context), request.version)
        return pb.ModelConfigResponse(config=convert.model_config(config))

    @maps_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        name = routed_model(request.name, context)
        found = await self.service.gather_statistics(name, request.version)
        return convert.statistics_response(found)

    # -- inference ------------------------------------------------------------------------

    @maps_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        name = routed_model(request.model_name, context)
        span = self._span(name, context)
        try:
            decoded = convert.decode_request(
                request, name, self.service.max_tensor_elements, regions=self.service.shared_memory
            )
            asked = decoded.request if span is None else replace(decoded.request, trace=span)
            response = await self.service.infer(asked)
            answer = convert.encode_response(
                response, decoded.typed_output, regions=self.service.shared_memory
            )
        except Exception as exc:
            if span is not None:
                _end_span(span, exc)
            raise
        if span is not None:
            _end_span(span, None)
        return answer

    def _span(self, model: str, context: Context) -> RequestSpan | None:
        """ModelInfer's span, its parent the caller's ``traceparent`` metadata; None
        when tracing is off."""
        tracer = self.service.tracer
        if tracer is None:
            return None
        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        return tracer.request(kind="grpc", name=INFER_SPAN, model=model, carrier=carrier)

    def start_infer(
        self, raw: bytes, context: Context, done: Callable[[bytes | BaseException], None]
    ) -> asyncio.Future[Any] | None:
        """ModelInfer in two halves for the native transport: parse, check and queue
        now, and call ``done`` with the serialized answer (or the error) from the batch's
        callback, with no task per call. The same steps as :meth:`ModelInfer`. Returns
        the queued request's future (cancelling it drops the request if it has not run),
        or None if ``done`` was called already."""
        try:
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError as exc:
            done(InvalidInput(f"{MODEL_INFER}: the request is not a valid protobuf message: {exc}"))
            return None

        span = None
        if self.service.tracer is not None:  # tracing on: the call's span, ended by done
            span = self._span(routed_model(request.model_name, context), context)
            if span is not None:
                done = _ending(span, done)

        def finished() -> None:  # the batcher calls it once the request's future is done
            try:
                response = self.service.finish(started)
                answer = convert.encode_response(
                    response, decoded.typed_output, regions=self.service.shared_memory
                )
                done(answer.SerializeToString())
            except Exception as exc:  # a ModelportError, or a fault the transport logs
                done(exc)

        try:
            name = routed_model(request.model_name, context)
            decoded = convert.decode_request(
                request,
                name,
                self.service.max_tensor_elements,
                regions=self.service.shared_memory,
            )
            asked = decoded.request if span is None else replace(decoded.request, trace=span)
            started = self.service.start(asked, finished)
        except ModelportError as exc:
            done(exc)
            return None
        return started.future

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        model_id = routed_model("", context)
        slots = asyncio.Semaphore(STREAM_WINDOW)
        answers: asyncio.Queue[asyncio.Task[pb.ModelStreamInferResponse] | None]
        answers = asyncio.Queue()  # in request order; None once the client is done

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()
                    answers.put_nowait(asyncio.create_task(self._stream_one(request, model_id)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await answers.get()) is not None:
                answer = await task
                slots.release()
                yield answer
            await reader  # a broken request stream ends the call with its error
        finally:
            reader.cancel()
            while not answers.empty():
                leftover = answers.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def _stream_one(
        self, request: pb.ModelInferRequest, model_id: str
    ) -> pb.ModelStreamInferResponse:
        try:
            decoded = convert.decode_request(
                request,
                model_id or request.model_name,
                self.service.max_tensor_elements,
                regions=self.service.shared_memory,
            )
            response = await self.service.infer(decoded.request)
            answer = convert.encode_response(
                response, decoded.typed_output, regions=self.service.shared_memory
            )
        except ModelportError as exc:
            # The id and model let a client match the error to the request it sent.
            failed = pb.ModelInferResponse(model_name=model_id or request.model_name, id=request.id)
            return pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
        return pb.ModelStreamInferResponse(infer_response=answer)

    # -- repository -----------------------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        return convert.index_response(self.service.index(request.ready))

    @maps_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        if "config" in request.parameters:
            raise Unsupported(
                "loading with an override config is not supported; "
                "edit the model's model.yaml and load again"
            )
        await self.service.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @maps_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.service.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory (Triton's extension) ----------------------------------------------

    @maps_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        answer = pb.SystemSharedMemoryStatusResponse()
        for region in self.service.shared_memory.status(request.name):
            answer.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name,
                    key=region.key,
                    offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return answer

    @maps_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await self.service.register_region(
            RegionStatus(request.name, request.key, request.offset, request.byte_size)
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @maps_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self.service.unregister_region(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @maps_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        raise refuse_cuda()

    @maps_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise refuse_cuda()

    @maps_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        raise refuse_cuda()


def _end_span(span: RequestSpan, error: BaseException | None) -> None:
    """End a call's span with its gRPC code (a core error's, INTERNAL for a crash)."""
    if error is None:
        span.end(status="OK")
        return
    code = STATUS[error.kind].name if isinstance(error, ModelportError) else "INTERNAL"
    span.end(f"{type(error).__name__}: {error}" if code in SERVER_FAULTS else "", status=code)


def _ending(
    span: RequestSpan, done: Callable[[bytes | BaseException], None]
) -> Callable[[bytes | BaseException], None]:
    """``done``, ending ``span`` first."""

    def ended(answer: bytes | BaseException) -> None:
        _end_span(span, answer if isinstance(answer, BaseException) else None)
        done(answer)

    return ended
