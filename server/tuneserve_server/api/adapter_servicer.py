"""AdapterService: the registry of trained adapters and their residency in this process."""

from __future__ import annotations

import asyncio
import functools

import structlog

from tuneserve.v1 import adapters_pb2, adapters_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.rpc import rpc
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.domain.errors import InvalidRequest, NotFound
from tuneserve_server.domain.naming import AdapterRef, namespace_of
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore

log = structlog.get_logger("tuneserve.api")


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(self, store: JobStore, adapter_store: AdapterStore, engine: InferenceEngine) -> None:
        self.store = store
        self.adapter_store = adapter_store
        self.engine = engine

    async def _residency(self) -> convert.Residency:
        return {(k.namespace, k.name, k.version): v for k, v in (await self.engine.residency()).items()}

    @rpc
    async def ListAdapters(self, request, context):  # noqa: N802, ANN001, ANN201
        namespace = namespace_of(request.namespace)
        names, token = await asyncio.to_thread(
            functools.partial(
                self.store.adapter_names,
                namespace,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        records = await asyncio.to_thread(self.store.adapter_versions, namespace)
        residency = await self._residency()
        wanted = set(names)
        by_name: dict[str, list] = {}
        for rec in records:
            if rec.name in wanted:
                by_name.setdefault(rec.name, []).append(rec)
        return adapters_pb2.ListAdaptersResponse(
            adapters=[convert.adapter_pb(by_name[n], residency) for n in names if n in by_name],
            next_page_token=token,
        )

    @rpc
    async def GetAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.name, field="name")
        if ref.version is not None:
            raise InvalidRequest.field("name", "takes a name without @version")
        records = await asyncio.to_thread(self.store.adapter_versions, ref.namespace, ref.name)
        if not records:
            raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
        return adapters_pb2.GetAdapterResponse(adapter=convert.adapter_pb(records, await self._residency()))

    @rpc
    async def DeleteAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.adapter)
        deleted = await asyncio.to_thread(
            self.store.delete_adapter_versions, ref.namespace, ref.name, ref.version
        )
        for rec in deleted:
            await asyncio.to_thread(self.adapter_store.delete, rec.namespace, rec.name, rec.version)
        await self.engine.refresh()
        return adapters_pb2.DeleteAdapterResponse(deleted_versions=[r.version for r in deleted])

    @rpc
    async def LoadAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        record, pinned, size, seconds = await self.engine.load_adapter(ref, pin=request.pin)
        return adapters_pb2.LoadAdapterResponse(
            adapter_name=record.name, adapter_version=record.version, pinned=pinned,
            size_bytes=size, load_seconds=seconds,
        )

    @rpc
    async def UnloadAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        return adapters_pb2.UnloadAdapterResponse(unloaded_versions=await self.engine.unload_adapter(ref))
