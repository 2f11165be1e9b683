"""gRPC servicers: validate, convert to domain values, delegate, convert back.

Every handler is wrapped by `_rpc`, which turns any exception into a status through the one
table in status_map. Blocking store calls run in a thread, torch work on the engine's
executor: the event loop only routes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from tuneserve.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tuneserve_server.api import convert
from tuneserve_server.api.status_map import abort_with
from tuneserve_server.config import Settings
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.errors import InvalidRequest, NotFound, NotReady
from tuneserve_server.naming import AdapterRef, namespace_of
from tuneserve_server.observability.metrics import JOBS_SUBMITTED
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.jobs import JobState
from tuneserve_server.training.validation import build_job_spec

log = structlog.get_logger("tuneserve.api")
R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def _rpc(fn: Handler[R]) -> Handler[R]:
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


def _job_id(value: str) -> str:
    if not value:
        raise InvalidRequest.field("job_id", "is required")
    return value


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: JobStore, engine: InferenceEngine) -> None:
        self.store = store
        self.engine = engine

    @_rpc
    async def Train(self, request, context):  # noqa: N802, ANN001, ANN201
        if not self.engine.ready:
            raise NotReady("the base model is still loading; retry shortly")
        structlog.contextvars.bind_contextvars(adapter=request.adapter_name)
        spec = build_job_spec(convert.train_input(request), self.engine.train_limits())
        job, created = await asyncio.to_thread(self.store.create_job, spec)
        if created:
            JOBS_SUBMITTED.inc()
            log.info("job queued", job_id=job.id, train_examples=job.train_examples)
        return training_pb2.TrainResponse(job=convert.job_pb(job), created=created)

    @_rpc
    async def GetJob(self, request, context):  # noqa: N802, ANN001, ANN201
        job = await asyncio.to_thread(
            self.store.get_job, namespace_of(request.namespace), _job_id(request.job_id)
        )
        if job.state is JobState.SUCCEEDED and self.engine.catalog.latest(
            job.namespace, job.adapter_name
        ) < job.adapter_version:
            # Read-your-writes: whoever saw the job succeed here can predict with it next.
            await self.engine.refresh()
        return training_pb2.GetJobResponse(job=convert.job_pb(job))

    @_rpc
    async def ListJobs(self, request, context):  # noqa: N802, ANN001, ANN201
        jobs, token = await asyncio.to_thread(
            functools.partial(
                self.store.list_jobs,
                namespace_of(request.namespace),
                states=convert.job_states(request.states),
                adapter_name=request.adapter_name,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return training_pb2.ListJobsResponse(
            jobs=[convert.job_pb(j) for j in jobs], next_page_token=token
        )

    @_rpc
    async def CancelJob(self, request, context):  # noqa: N802, ANN001, ANN201
        job = await asyncio.to_thread(
            self.store.cancel_job, namespace_of(request.namespace), _job_id(request.job_id)
        )
        return training_pb2.CancelJobResponse(job=convert.job_pb(job))


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, settings: Settings, engine: InferenceEngine) -> None:
        self.settings = settings
        self.engine = engine

    def _inputs(self, request: inference_pb2.PredictRequest) -> list[str]:
        if not request.inputs:
            raise InvalidRequest.field("inputs", "must hold at least one text")
        if len(request.inputs) > self.settings.max_predict_inputs:
            raise InvalidRequest.field(
                "inputs", f"at most {self.settings.max_predict_inputs} texts per call"
            )
        for i, text in enumerate(request.inputs):
            if not text.strip():
                raise InvalidRequest.field(f"inputs[{i}]", "must not be empty")
            if len(text) > self.settings.max_text_chars:
                raise InvalidRequest.field(
                    f"inputs[{i}]", f"longer than {self.settings.max_text_chars} characters"
                )
        return list(request.inputs)

    @_rpc
    async def Predict(self, request, context):  # noqa: N802, ANN001, ANN201
        namespace = namespace_of(request.namespace)
        structlog.contextvars.bind_contextvars(adapter=request.adapter or "__base__")
        ref = AdapterRef.parse(namespace, request.adapter) if request.adapter else None
        inputs = self._inputs(request)
        if self.settings.log_payloads:
            log.info("predict inputs", inputs=inputs)
        result = await self.engine.classify(ref, inputs)
        return inference_pb2.PredictResponse(
            predictions=[
                convert.classification_pb(s, request.return_probabilities) for s in result.scores
            ],
            adapter_name=result.adapter.name if result.adapter else "",
            adapter_version=result.adapter.version if result.adapter else 0,
        )


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    def __init__(self, store: JobStore, adapter_store: AdapterStore, engine: InferenceEngine) -> None:
        self.store = store
        self.adapter_store = adapter_store
        self.engine = engine

    async def _residency(self) -> convert.Residency:
        return {(k.namespace, k.name, k.version): v for k, v in (await self.engine.residency()).items()}

    @_rpc
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

    @_rpc
    async def GetAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.name, field="name")
        if ref.version is not None:
            raise InvalidRequest.field("name", "takes a name without @version")
        records = await asyncio.to_thread(self.store.adapter_versions, ref.namespace, ref.name)
        if not records:
            raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
        return adapters_pb2.GetAdapterResponse(adapter=convert.adapter_pb(records, await self._residency()))

    @_rpc
    async def DeleteAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.adapter)
        deleted = await asyncio.to_thread(
            self.store.delete_adapter_versions, ref.namespace, ref.name, ref.version
        )
        for rec in deleted:
            await asyncio.to_thread(self.adapter_store.delete, rec.namespace, rec.name, rec.version)
        await self.engine.refresh()
        return adapters_pb2.DeleteAdapterResponse(deleted_versions=[r.version for r in deleted])

    @_rpc
    async def LoadAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        record, pinned, size, seconds = await self.engine.load_adapter(ref, pin=request.pin)
        return adapters_pb2.LoadAdapterResponse(
            adapter_name=record.name, adapter_version=record.version, pinned=pinned,
            size_bytes=size, load_seconds=seconds,
        )

    @_rpc
    async def UnloadAdapter(self, request, context):  # noqa: N802, ANN001, ANN201
        ref = AdapterRef.parse(namespace_of(request.namespace), request.adapter)
        structlog.contextvars.bind_contextvars(adapter=request.adapter)
        return adapters_pb2.UnloadAdapterResponse(unloaded_versions=await self.engine.unload_adapter(ref))
