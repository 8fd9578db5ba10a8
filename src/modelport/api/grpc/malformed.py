"""Requests that are not valid protobuf messages get INVALID_ARGUMENT, saying so.

grpc.aio answers a request its deserializer cannot parse with UNKNOWN ("Unexpected
DecodeError"), which reads as a server fault. :class:`RefuseMalformed` wraps each
method's deserializer: a message that does not parse becomes a :class:`Malformed`
marker, and the method answers it with INVALID_ARGUMENT before the servicer sees it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that did not parse, and why."""

    error: str


class RefuseMalformed(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers unparsable requests (unary and streamed) with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        decode = handler.request_deserializer

        def deserialize(raw: bytes) -> Any:
            try:
                return decode(raw)
            except DecodeError as exc:
                return Malformed(f"{method}: the request is not a valid protobuf message: {exc}")

        if inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary), deserialize, handler.response_serializer
            )
        if inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                _streamed(handler.stream_stream), deserialize, handler.response_serializer
            )
        return handler


def _unary(inner: Any) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        return await inner(request, context)

    return unary


def _streamed(inner: Any) -> Any:
    async def streamed(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async def each() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
                yield request

        async for reply in inner(each(), context):
            yield reply

    return streamed
