"""Server interceptor giving every RPC a request context: a request id (the caller's
`x-request-id` metadata or a new one, returned in trailing metadata), structlog context
(request_id, method, peer) for every log line of the call, an access log line, and the RPC
count/latency metrics by method and status code. Every RPC kind passes through it: unary,
client-streaming (UploadDataset), server-streaming (WatchJob, PredictStream) and bidi."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from tuneserve_server.observability.metrics import RPC_LATENCY, RPC_REQUESTS

log = structlog.get_logger("tuneserve.rpc")
REQUEST_ID_KEY = "x-request-id"
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")  # probes: debug level, not info


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex


class _Call:
    """Bookkeeping for one RPC: context vars in, metrics and access log out."""

    def __init__(self, details: grpc.HandlerCallDetails, context: grpc.aio.ServicerContext) -> None:
        self.full_method = details.method
        self.method = details.method.rsplit("/", 1)[-1]
        self.request_id = _request_id(details)
        self.context = context
        self.start = time.perf_counter()
        self.quiet = details.method.startswith(_QUIET_PREFIXES)
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        self.bound = structlog.contextvars.bound_contextvars(
            request_id=self.request_id, method=self.method, peer=context.peer()
        )

    def finish(self, error: BaseException | None) -> None:
        code = self.context.code()
        if code is None:
            if isinstance(error, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            elif error is not None and not isinstance(error, grpc.aio.AbortError):
                code = grpc.StatusCode.UNKNOWN
            else:
                code = grpc.StatusCode.OK
        elapsed = time.perf_counter() - self.start
        RPC_REQUESTS.labels(self.method, code.name).inc()
        RPC_LATENCY.labels(self.method).observe(elapsed)
        emit = log.debug if self.quiet else log.info
        emit("rpc", code=code.name, duration_ms=round(elapsed * 1000, 2))


def _wrap_unary(inner: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(details, context)
        with call.bound:
            error: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.finish(error)

    return handler


def _wrap_stream(inner: Callable[..., AsyncIterator[Any]], details: grpc.HandlerCallDetails):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _Call(details, context)
        with call.bound:
            error: BaseException | None = None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.finish(error)

    return handler


_MAKE_HANDLER = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every kind of handler: unary and client-streaming calls (UploadDataset) as
    one awaited call, server- and bidi-streaming ones (WatchJob, PredictStream) as an
    async generator, or as one awaited call when the handler writes with context.write."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind, make in _MAKE_HANDLER.items():
            inner = getattr(handler, kind)
            if inner is None:
                continue
            wrap = _wrap_stream if inspect.isasyncgenfunction(inner) else _wrap_unary
            return make(
                wrap(inner, handler_call_details),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
