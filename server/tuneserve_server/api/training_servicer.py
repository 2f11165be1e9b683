"""TrainingService: Train, GetJob, ListJobs, CancelJob."""

from __future__ import annotations

import asyncio
import functools

import structlog

from tuneserve.v1 import training_pb2, training_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.rpc import require_id, rpc
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.errors import NotReady
from tuneserve_server.naming import namespace_of
from tuneserve_server.observability.metrics import JOBS_SUBMITTED
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.jobs import JobState
from tuneserve_server.training.validation import build_job_spec

log = structlog.get_logger("tuneserve.api")


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: JobStore, engine: InferenceEngine) -> None:
        self.store = store
        self.engine = engine

    @rpc
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

    @rpc
    async def GetJob(self, request, context):  # noqa: N802, ANN001, ANN201
        job = await asyncio.to_thread(
            self.store.get_job, namespace_of(request.namespace), require_id(request.job_id)
        )
        if job.state is JobState.SUCCEEDED and self.engine.catalog.latest(
            job.namespace, job.adapter_name
        ) < job.adapter_version:
            # Read-your-writes: whoever saw the job succeed here can predict with it next.
            await self.engine.refresh()
        return training_pb2.GetJobResponse(job=convert.job_pb(job))

    @rpc
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

    @rpc
    async def CancelJob(self, request, context):  # noqa: N802, ANN001, ANN201
        job = await asyncio.to_thread(
            self.store.cancel_job, namespace_of(request.namespace), require_id(request.job_id)
        )
        return training_pb2.CancelJobResponse(job=convert.job_pb(job))


