"""AdapterService: the registry of trained adapters, their residency in this process, and
adapters leaving (ExportAdapter) and entering (ImportAdapter) in peft's format."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from tuneserve.v1 import adapters_pb2, adapters_pb2_grpc
from tuneserve_server.api.auth_interceptor import current_principal, namespace
from tuneserve_server.api.convert_aliases import adapter_with_aliases_pb, move_pb
from tuneserve_server.api.rpc import rpc, rpc_stream
from tuneserve_server.domain.aliases import Actor
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.naming import DEFAULT_ALIAS, AdapterRef, check_name
from tuneserve_server.services.adapter_transfer import (
    AdapterTransferService,
    ArchiveChunk,
    ImportHeader,
    ImportPart,
)
from tuneserve_server.services.adapters import AdapterService


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


def _actor() -> Actor:
    """Who is calling, for the alias history: the credential's tenant and key id."""
    principal = current_principal()
    return Actor(principal.tenant, principal.key_id)


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(self, adapters: AdapterService, transfer: AdapterTransferService) -> None:
        self.adapters = adapters
        self.transfer = transfer

    @rpc
    async def ListAdapters(self, request, context):
        ns = namespace(request.namespace)
        page = await self.adapters.list(ns, page_size=request.page_size, page_token=request.page_token)
        aliases = await self.adapters.aliases(ns)
        return adapters_pb2.ListAdaptersResponse(
            adapters=[adapter_with_aliases_pb(records, page.residency, aliases) for records in page.adapters],
            next_page_token=page.next_page_token,
        )

    async def _adapter(self, ns: str, name: str) -> adapters_pb2.Adapter:
        records, residency = await self.adapters.get(ns, name)
        return adapter_with_aliases_pb(records, residency, await self.adapters.aliases(ns, name))

    @rpc
    async def GetAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.name, field="name")
        if not ref.bare:
            raise InvalidRequest.field("name", "takes a name without @version")
        return adapters_pb2.GetAdapterResponse(adapter=await self._adapter(ref.namespace, ref.name))

    @rpc
    async def DeleteAdapter(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        return adapters_pb2.DeleteAdapterResponse(deleted_versions=await self.adapters.delete(ref, _actor()))

    @rpc
    async def SetAlias(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        move = await self.adapters.set_alias(ref, request.alias, _actor(), request.reason)
        return adapters_pb2.SetAliasResponse(
            move=move_pb(move), adapter=await self._adapter(ref.namespace, ref.name)
        )

    @rpc
    async def DeleteAlias(self, request, context):
        ns = namespace(request.namespace)
        check_name(request.name, "name")
        move = await self.adapters.remove_alias(ns, request.name, request.alias, _actor(), request.reason)
        return adapters_pb2.DeleteAliasResponse(
            move=move_pb(move), adapter=await self._adapter(ns, request.name)
        )

    @rpc
    async def PromoteVersion(self, request, context):
        ref = AdapterRef.parse(namespace(request.namespace), request.adapter)
        move = await self.adapters.promote(ref, _actor(), request.reason)
        return adapters_pb2.PromoteVersionResponse(
            move=move_pb(move), adapter=await self._adapter(ref.namespace, ref.name)
        )

    @rpc
    async def Rollback(self, request, context):
        ns = namespace(request.namespace)
        check_name(request.name, "name")
        move = await self.adapters.rollback(
            ns, request.name, _actor(), request.reason, alias=request.alias or DEFAULT_ALIAS
        )
        return adapters_pb2.RollbackResponse(
            move=move_pb(move), adapter=await self._adapter(ns, request.name)
        )

    @rpc
    async def ListAliasHistory(self, request, context):
        ns = namespace(request.namespace)
        check_name(request.name, "name")
        moves, token = await self.adapters.history(
            ns, request.name, alias=request.alias, page_size=request.page_size, page_token=request.page_token
        )
        return adapters_pb2.ListAliasHistoryResponse(moves=[move_pb(m) for m in moves], next_page_token=token)

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
        return adapters_pb2.ImportAdapterResponse(
            adapter=await self._adapter(record.namespace, record.name), version=record.version
        )
