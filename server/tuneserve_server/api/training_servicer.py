"""TrainingService: Train, GetJob, ListJobs, CancelJob, WatchJob."""

from __future__ import annotations

import asyncio
import functools

import structlog

from tuneserve.v1 import training_pb2, training_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.rpc import require_id, rpc, rpc_stream
from tuneserve_server.datasets import prepare_train
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.domain.errors import NotReady
from tuneserve_server.domain.naming import namespace_of
from tuneserve_server.observability.metrics import JOBS_SUBMITTED
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.domain.jobs import JobState

WATCH_PAGE = 500

log = structlog.get_logger("tuneserve.api")


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: JobStore, engine: InferenceEngine, *, watch_poll_s: float = 0.25) -> None:
        self.store = store
        self.engine = engine
        self.watch_poll_s = watch_poll_s

    @rpc
    async def Train(self, request, context):  # noqa: N802, ANN001, ANN201
        if not self.engine.ready:
            raise NotReady("the base model is still loading; retry shortly")
        structlog.contextvars.bind_contextvars(adapter=request.adapter_name)
        spec, report = await asyncio.to_thread(
            prepare_train, self.store, convert.train_input(request), self.engine.train_limits()
        )
        job, created = await asyncio.to_thread(self.store.create_job, spec, report.to_dict())
        if created:
            JOBS_SUBMITTED.inc()
            log.info("job queued", job_id=job.id, train_examples=job.train_examples,
                     data_warnings=len(report.warnings))
        return training_pb2.TrainResponse(
            job=convert.job_pb(job), created=created,
            data_report=convert.data_report_pb(job.data_report or report.to_dict()),
        )

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

    @rpc_stream
    async def WatchJob(self, request, context):  # noqa: N802, ANN001, ANN201
        """Replays the log after `after_sequence`, then polls it until the job has ended and
        every event is sent. The store logs the final state in the same transaction that sets
        it, so once the job reads terminal, one more read holds everything."""
        namespace = namespace_of(request.namespace)
        job_id = require_id(request.job_id)
        after = request.after_sequence
        ended = False
        while True:
            events = await asyncio.to_thread(self.store.list_events, namespace, job_id, after, WATCH_PAGE)
            for event in events:
                yield training_pb2.WatchJobResponse(event=convert.event_pb(event))
                after = event.sequence
            if len(events) == WATCH_PAGE:
                continue
            if ended:
                return
            job = await asyncio.to_thread(self.store.get_job, namespace, job_id)
            if job.state.terminal:
                ended = True  # one more read, then done
                continue
            await asyncio.sleep(self.watch_poll_s)

