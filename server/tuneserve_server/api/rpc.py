"""What every servicer shares: `rpc` turns any exception into a status through the one
table in status_map, so handlers only validate, convert, delegate and convert back. Blocking
store calls run in a thread, torch work on the engine's executor: the event loop only routes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from tuneserve_server.api.status_map import abort_with
from tuneserve_server.domain.errors import InvalidRequest

R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def rpc(fn: Handler[R]) -> Handler[R]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await fn(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort_with(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def rpc_stream(fn: Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]]):
    """`rpc` for server-streaming handlers (async generators): an exception raised before or
    between messages ends the stream with its status from the same table."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            await abort_with(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def require_id(value: str, field: str = "job_id") -> str:
    if not value:
        raise InvalidRequest.field(field, "is required")
    return value
