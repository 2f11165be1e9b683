"""AdapterService: the registry of trained adapters and their residency in this process."""

from __future__ import annotations

import structlog

from tuneserve.v1 import adapters_pb2, adapters_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import namespace
from tuneserve_server.api.rpc import rpc
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.services.adapters import AdapterService


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(self, adapters: AdapterService) -> None:
        self.adapters = adapters

    @rpc
    async def ListAdapters(self, request, context):
        page = await self.adapters.list(
            namespace(request.namespace), page_size=request.page_size, page_token=request.page_token
        )
        return adapters_pb2.ListAdaptersResponse(
            adapters=[convert.adapter_pb(records, page.residency) for records in page.adapters],
            next_page_token=page.next_page_token,
        )

    @rpc
    async def GetAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.name, field="name")
        if ref.version is not None:
            raise InvalidRequest.field("name", "takes a name without @version")
        records, residency = await self.adapters.get(ref.namespace, ref.name)
        return adapters_pb2.GetAdapterResponse(adapter=convert.adapter_pb(records, residency))

    @rpc
    async def DeleteAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        return adapters_pb2.DeleteAdapterResponse(deleted_versions=await self.adapters.delete(ref))

    @rpc
    async def LoadAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        loaded = await self.adapters.load(ref, pin=request.pin)
        return adapters_pb2.LoadAdapterResponse(
            adapter_name=loaded.record.name,
            adapter_version=loaded.record.version,
            pinned=loaded.pinned,
            size_bytes=loaded.size_bytes,
            load_seconds=loaded.load_seconds,
        )

    @rpc
    async def UnloadAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        return adapters_pb2.UnloadAdapterResponse(unloaded_versions=await self.adapters.unload(ref))
