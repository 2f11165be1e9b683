"""TrainingService: Train, GetJob, ListJobs, CancelJob, WatchJob."""

from __future__ import annotations

from dataclasses import replace

import structlog

from tuneserve.v1 import training_pb2, training_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import namespace
from tuneserve_server.api.rpc import require_id, rpc, rpc_stream
from tuneserve_server.services.training import TrainingService


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, training: TrainingService) -> None:
        self.training = training

    @rpc
    async def Train(self, request, context):
        structlog.contextvars.bind_contextvars(adapter=request.adapter_name)
        train = convert.train_input(request)
        submitted = await self.training.submit(replace(train, namespace=namespace(request.namespace)))
        return training_pb2.TrainResponse(
            job=convert.job_pb(submitted.job),
            created=submitted.created,
            data_report=convert.data_report_pb(submitted.data_report),
        )

    @rpc
    async def GetJob(self, request, context):
        job = await self.training.get_job(namespace(request.namespace), require_id(request.job_id))
        return training_pb2.GetJobResponse(job=convert.job_pb(job))

    @rpc
    async def ListJobs(self, request, context):
        jobs, token = await self.training.list_jobs(
            namespace(request.namespace),
            states=convert.job_states(request.states),
            adapter_name=request.adapter_name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return training_pb2.ListJobsResponse(jobs=[convert.job_pb(j) for j in jobs], next_page_token=token)

    @rpc
    async def CancelJob(self, request, context):
        job = await self.training.cancel_job(namespace(request.namespace), require_id(request.job_id))
        return training_pb2.CancelJobResponse(job=convert.job_pb(job))

    @rpc_stream
    async def WatchJob(self, request, context):
        """The job's events after `after_sequence`, then live ones until it has ended."""
        events = self.training.watch(
            namespace(request.namespace), require_id(request.job_id), request.after_sequence
        )
        async for event in events:
            yield training_pb2.WatchJobResponse(event=convert.event_pb(event))
