"""AdapterService: the registry of trained adapters, their residency in this process, and
adapters leaving (ExportAdapter) and entering (ImportAdapter) in peft's format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from tuneserve.v1 import adapters_pb2, adapters_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import namespace
from tuneserve_server.api.feedback_servicer import add_stats
from tuneserve_server.api.rpc import rpc, rpc_stream
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.services.adapter_transfer import (
    AdapterTransferService,
    ArchiveChunk,
    ImportHeader,
    ImportPart,
)
from tuneserve_server.services.adapters import AdapterService
from tuneserve_server.services.feedback import FeedbackService


async def _import_parts(
    messages: AsyncIterator[adapters_pb2.ImportAdapterRequest],
) -> AsyncIterator[ImportPart]:
    """The stream's messages as the service reads them, one at a time: the first as a
    header (its namespace resolved for the caller), the rest as chunks (None: the wrong kind)."""
    first = True
    async for message in messages:
        kind = message.WhichOneof("part")
        if first:
            first = False
            if kind != "header":
                yield None
                continue
            h = message.header
            yield ImportHeader(
                namespace=namespace(h.namespace, "header.namespace"),
                name=h.name,
                size_bytes=h.size_bytes,
                sha256=h.sha256,
                labels=tuple(h.labels),
                temperature=h.temperature,
            )
        else:
            yield ArchiveChunk(message.chunk.offset, message.chunk.data) if kind == "chunk" else None


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(
        self,
        adapters: AdapterService,
        transfer: AdapterTransferService,
        feedback: FeedbackService | None = None,
    ) -> None:
        self.adapters = adapters
        self.transfer = transfer
        self.feedback = feedback  # each version's live feedback quality in GetAdapter

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
        adapter = convert.adapter_pb(records, residency)
        if self.feedback is not None:
            add_stats(adapter, await self.feedback.stats(ref.namespace, ref.name))
        return adapters_pb2.GetAdapterResponse(adapter=adapter)

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

    @rpc_stream
    async def ExportAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        async with self.transfer.export(ref) as export:
            yield adapters_pb2.ExportAdapterResponse(
                header=adapters_pb2.AdapterArchive(
                    adapter_name=export.record.name,
                    adapter_version=export.record.version,
                    size_bytes=export.size_bytes,
                    sha256=export.sha256,
                    files=export.files,
                )
            )
            async for offset, data in export.chunks():
                yield adapters_pb2.ExportAdapterResponse(
                    chunk=adapters_pb2.AdapterArchiveChunk(offset=offset, data=data)
                )

    @rpc
    async def ImportAdapter(self, request_iterator, context):
        record = await self.transfer.import_adapter(_import_parts(request_iterator))
        records, residency = await self.adapters.get(record.namespace, record.name)
        return adapters_pb2.ImportAdapterResponse(
            adapter=convert.adapter_pb(records, residency), version=record.version
        )
