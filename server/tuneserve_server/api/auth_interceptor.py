"""The one place every RPC passes for identity: authenticate (services/auth.py), check the
method's role, and make the principal available to the servicers for the rest of the call.

* Every method of the tuneserve services is authenticated, unary and streaming alike
  (UploadDataset is client-streaming; WatchJob and PredictStream server-streaming). gRPC
  health never is; reflection only with `reflection_requires_auth`.
* `METHOD_ROLES` says which role each method needs; a method of ours that it does not list
  needs admin (a new RPC is closed until someone gives it a role here).
* The principal is in a contextvar (`current_principal()`), and tenant / key_id are bound into
  structlog's context, so every log line and audit event of the call carries them.
  Servicers turn a request's `namespace` into the one the call acts in with `namespace()`.

It sits inside the request-context interceptor, so a refused call still has its request id,
access-log line and RPC metrics, and its auth.failed audit event carries the request id."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from tuneserve_server.api.status_map import abort_with
from tuneserve_server.domain.errors import Unauthenticated
from tuneserve_server.domain.tenancy import Principal, Role
from tuneserve_server.services.auth import Authenticator, require_role, resolve_namespace

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tuneserve_principal", default=None
)

_P, _T = Role.PREDICT, Role.TRAIN
METHOD_ROLES: dict[str, Role] = {
    "/tuneserve.v1.InferenceService/Predict": _P,
    "/tuneserve.v1.InferenceService/PredictStream": _P,
    "/tuneserve.v1.AdapterService/ListAdapters": _P,
    "/tuneserve.v1.AdapterService/GetAdapter": _P,
    "/tuneserve.v1.AdapterService/DeleteAdapter": _T,
    "/tuneserve.v1.AdapterService/LoadAdapter": _T,  # loading and pinning take cache slots
    "/tuneserve.v1.AdapterService/UnloadAdapter": _T,
    # Export reads an adapter as GetAdapter does (the predict role: "reading adapters");
    # import creates a version, as a training job does.
    "/tuneserve.v1.AdapterService/ExportAdapter": _P,
    "/tuneserve.v1.AdapterService/ImportAdapter": _T,
    # Moving an alias changes what is served, as training a version does; the history is
    # read like GetAdapter.
    "/tuneserve.v1.AdapterService/SetAlias": _T,
    "/tuneserve.v1.AdapterService/DeleteAlias": _T,
    "/tuneserve.v1.AdapterService/PromoteVersion": _T,
    "/tuneserve.v1.AdapterService/Rollback": _T,
    "/tuneserve.v1.AdapterService/ListAliasHistory": _P,
    "/tuneserve.v1.TrainingService/Train": _T,
    "/tuneserve.v1.TrainingService/GetJob": _T,
    "/tuneserve.v1.TrainingService/ListJobs": _T,
    "/tuneserve.v1.TrainingService/CancelJob": _T,
    "/tuneserve.v1.TrainingService/WatchJob": _T,
    "/tuneserve.v1.DatasetService/UploadDataset": _T,
    "/tuneserve.v1.DatasetService/GetDataset": _T,
    "/tuneserve.v1.DatasetService/ListDatasets": _T,
    "/tuneserve.v1.DatasetService/DeleteDataset": _T,
    "/tuneserve.v1.DatasetService/ValidateDataset": _T,
    "/tuneserve.v1.DatasetService/ListUploads": _T,
    "/tuneserve.v1.DatasetService/DeleteUpload": _T,
    "/tuneserve.v1.ServerInfoService/GetServerInfo": _P,  # the lowest role: any caller
}
_HEALTH = "/grpc.health.v1.Health/"
_REFLECTION = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")


def current_principal() -> Principal:
    """The caller of the current RPC. Outside an authenticated call: Unauthenticated (a
    servicer reached without this interceptor refuses rather than guesses a tenant)."""
    principal = _PRINCIPAL.get()
    if principal is None:
        raise Unauthenticated("authentication failed: no credential for this call")
    return principal


def namespace(requested: str, field: str = "namespace") -> str:
    """The namespace this call acts in (services.auth.resolve_namespace for the caller)."""
    return resolve_namespace(current_principal(), requested, field)


def required_role(method: str) -> Role | None:
    """The role `method` needs; None: no credential at all (health, maybe reflection)."""
    return METHOD_ROLES.get(method, Role.ADMIN)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, *, reflection_requires_auth: bool = False) -> None:
        self.auth = authenticator
        self.open_prefixes = (_HEALTH,) if reflection_requires_auth else (_HEALTH, *_REFLECTION)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.open_prefixes):
            return handler
        check = self._checker(details)
        kind, wrapped = _kind(handler)
        inner = getattr(handler, kind)
        make = _wrap_gen if inspect.isasyncgenfunction(inner) else _wrap_coro
        return wrapped(
            make(inner, check),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _checker(
        self, details: grpc.HandlerCallDetails
    ) -> Callable[[grpc.aio.ServicerContext], Awaitable[Any]]:
        method = details.method
        role = required_role(method)
        name = method.rsplit("/", 1)[-1]

        async def check(context: grpc.aio.ServicerContext) -> Any:
            """Authenticate and authorise; returns the token to reset the contextvar."""
            try:
                principal = await self.auth.authenticate_async(details.invocation_metadata, _peer(context))
                if role is not None:
                    require_role(principal, role, name)
            except Exception as exc:
                await abort_with(context, exc)
                raise  # unreachable: abort raises
            structlog.contextvars.bind_contextvars(tenant=principal.tenant, key_id=principal.key_id)
            return _PRINCIPAL.set(principal)

        return check


def _peer(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    try:
        return dict(context.auth_context() or {})
    except Exception:  # no TLS: nothing to map
        return {}


def _kind(handler: grpc.RpcMethodHandler) -> tuple[str, Callable[..., grpc.RpcMethodHandler]]:
    if handler.unary_unary is not None:
        return "unary_unary", grpc.unary_unary_rpc_method_handler
    if handler.unary_stream is not None:
        return "unary_stream", grpc.unary_stream_rpc_method_handler
    if handler.stream_unary is not None:
        return "stream_unary", grpc.stream_unary_rpc_method_handler
    return "stream_stream", grpc.stream_stream_rpc_method_handler


def _reset(token: Any) -> None:
    try:
        _PRINCIPAL.reset(token)
    except ValueError:  # a generator finalised in another context: the call's task is ending
        pass


def _wrap_coro(inner: Callable[..., Awaitable[Any]], check: Callable[..., Awaitable[Any]]):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = await check(context)
        try:
            return await inner(request, context)
        finally:
            _reset(token)

    return handler


def _wrap_gen(inner: Callable[..., AsyncIterator[Any]], check: Callable[..., Awaitable[Any]]):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token = await check(context)
        try:
            async for item in inner(request, context):
                yield item
        finally:
            _reset(token)

    return handler
