"""API keys over gRPC: a server interceptor asking each call for the scope it needs.

The key travels in the ``authorization`` metadata as ``Bearer <key>``. Health (the
standard health service, ``ServerLive``, ``ServerReady``) is public unless
``public_health`` is off; loading and unloading need ``admin``; everything else
(KServe v2 and TF Serving) needs ``infer``. A refused call ends with UNAUTHENTICATED,
PERMISSION_DENIED (naming the scope) or RESOURCE_EXHAUSTED (the key's limit of calls
in progress, with ``retry-after`` trailing metadata), before its handler runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from modelport.api.grpc.errors import abort
from modelport.errors import ModelportError
from modelport.security.access import Grant, Guard, Need

V2 = "/inference.GRPCInferenceService/"
HEALTH_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        V2 + "ServerLive",
        V2 + "ServerReady",
    }
)
ADMIN_METHODS = frozenset(
    {
        V2 + "RepositoryModelLoad",
        V2 + "RepositoryModelUnload",
        V2 + "SystemSharedMemoryRegister",
        V2 + "SystemSharedMemoryUnregister",
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    }
)

Context: TypeAlias = grpc.aio.ServicerContext


def method_need(method: str) -> Need:
    if method in HEALTH_METHODS:
        return "health"
    if method in ADMIN_METHODS:
        return "admin"
    return "infer"


def admit_call(guard: Guard, need: Need, metadata: Any) -> Grant:
    """Let a call with this metadata in, or raise (the key's ``authorization``)."""
    value = next((v for k, v in metadata if k == "authorization"), None)
    return guard.admit(need, value if isinstance(value, str) else None)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each method's handler so the guard admits the call before it runs and its
    grant is released when it ends (streams included)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        # Always wrapped: whether keys are enforced can change while the server runs
        # (keys.json appears), and the native transport wraps each method once.
        return self._wrap(handler, method_need(details.method))

    async def _admit(self, need: Need, context: Context) -> Grant:
        try:
            return admit_call(self.guard, need, context.invocation_metadata() or ())
        except ModelportError as exc:
            await abort(context, exc)
            raise AssertionError("unreachable: abort raises") from None

    def _wrap(self, handler: grpc.RpcMethodHandler, need: Need) -> grpc.RpcMethodHandler:
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, need), **codec
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, need), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, need), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, need), **codec
        )

    def _unary(self, inner: Any, need: Need) -> Any:
        async def call(request: Any, context: Context) -> Any:
            grant = await self._admit(need, context)
            try:
                return await inner(request, context)
            finally:
                grant.release()

        return call

    def _stream(self, inner: Any, need: Need) -> Any:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            grant = await self._admit(need, context)
            try:
                async for answer in inner(request, context):
                    yield answer
            finally:
                grant.release()

        return call
