"""A real gRPC server on a free local port, for checking what the client sends and how it
handles what comes back. The servicers are stand-ins for the network peer only."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tuneserve.v1 import (
    adapters_pb2,
    adapters_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from tuneserve_client import Client


class RecordingTrainingService(training_pb2_grpc.TrainingServiceServicer):
    """Records requests; Train fails with UNAVAILABLE `unavailable_first` times, then queues."""

    def __init__(self) -> None:
        self.train_requests: list[training_pb2.TrainRequest] = []
        self.get_requests: list[training_pb2.GetJobRequest] = []
        self.list_requests: list[training_pb2.ListJobsRequest] = []
        self.deadlines: list[float | None] = []
        self.metadata: list[dict[str, str]] = []
        self.unavailable_first = 0
        self.jobs: dict[str, list[training_pb2.Job]] = {}  # job id -> states returned in turn

    def _record(self, context: grpc.ServicerContext) -> None:
        self.deadlines.append(context.time_remaining())
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    def Train(self, request, context):
        self._record(context)
        self.train_requests.append(request)
        if len(self.train_requests) <= self.unavailable_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        job = training_pb2.Job(
            id="job-1",
            namespace=request.namespace,
            adapter_name=request.adapter_name,
            task=request.task,
            state=training_pb2.JOB_STATE_QUEUED,
            request_id=request.request_id,
            train_examples=len(request.training_examples),
        )
        job.created_at.FromSeconds(1_700_000_000)
        return training_pb2.TrainResponse(job=job, created=True)

    def GetJob(self, request, context):
        self._record(context)
        self.get_requests.append(request)
        states = self.jobs.get(request.job_id)
        if not states:
            context.set_trailing_metadata((("x-request-id", "srv-42"),))
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        return training_pb2.GetJobResponse(job=states.pop(0) if len(states) > 1 else states[0])

    def ListJobs(self, request, context):
        self._record(context)
        self.list_requests.append(request)
        ids = sorted(self.jobs)
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = ids[start : start + size]
        token = str(start + size) if start + size < len(ids) else ""
        return training_pb2.ListJobsResponse(jobs=[self.jobs[i][0] for i in page], next_page_token=token)


class RecordingInferenceService(inference_pb2_grpc.InferenceServiceServicer):
    """Labels every input "pos" (0.9) / "neg" (0.1) and records requests."""

    def __init__(self) -> None:
        self.requests: list[inference_pb2.PredictRequest] = []

    def Predict(self, request, context):
        self.requests.append(request)
        scores = [
            inference_pb2.LabelScore(label="pos", score=0.9),
            inference_pb2.LabelScore(label="neg", score=0.1),
        ]
        prediction = inference_pb2.Prediction(
            classification=inference_pb2.Classification(
                label="pos", score=0.9, probabilities=scores if request.return_probabilities else []
            )
        )
        return inference_pb2.PredictResponse(predictions=[prediction] * len(request.inputs))


class RecordingAdapterService(adapters_pb2_grpc.AdapterServiceServicer):
    """Serves adapters named a, b, c one per page; deletes report versions 1 and 2."""

    def __init__(self) -> None:
        self.requests: list[object] = []

    def ListAdapters(self, request, context):
        self.requests.append(request)
        names = ["a", "b", "c"]
        index = int(request.page_token or 0)
        adapter = adapters_pb2.Adapter(
            namespace=request.namespace,
            name=names[index],
            latest_version=1,
            versions=[adapters_pb2.AdapterVersion(version=1, job_id=f"job-{index}")],
        )
        token = str(index + 1) if index + 1 < len(names) else ""
        return adapters_pb2.ListAdaptersResponse(adapters=[adapter], next_page_token=token)

    def DeleteAdapter(self, request, context):
        self.requests.append(request)
        return adapters_pb2.DeleteAdapterResponse(deleted_versions=[1, 2])


class StaticServerInfoService(server_info_pb2_grpc.ServerInfoServiceServicer):
    """A causal-LM server with API keys and JWTs, some quotas unlimited."""

    def GetServerInfo(self, request, context):
        return server_info_pb2.GetServerInfoResponse(
            base_model="org/lm",
            task=2,  # TASK_TYPE_CAUSAL_LM
            version="1.2.3",
            limits=server_info_pb2.ServerLimits(
                max_predict_inputs=7,
                max_text_chars=99,
                max_train_examples=500,
                max_lora_rank=32,
                max_dataset_bytes=1000,
                max_request_bytes=2000,
                max_sequence_tokens=2048,
                max_new_tokens_default=64,
                max_new_tokens_limit=256,
            ),
            quotas=server_info_pb2.TenantQuotas(active_jobs=3, pinned_adapters=2),
            auth=server_info_pb2.ServerAuth(mode=server_info_pb2.AUTH_MODE_API_KEY, jwt=True),
            features=server_info_pb2.ServerFeatures(generation=True, streaming_generation=True),
        )


@pytest.fixture
def adapter_service() -> RecordingAdapterService:
    return RecordingAdapterService()


@pytest.fixture
def inference_service() -> RecordingInferenceService:
    return RecordingInferenceService()


@pytest.fixture
def training_service() -> RecordingTrainingService:
    return RecordingTrainingService()


@pytest.fixture
def server_target(training_service, inference_service, adapter_service) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    training_pb2_grpc.add_TrainingServiceServicer_to_server(training_service, server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(inference_service, server)
    adapters_pb2_grpc.add_AdapterServiceServicer_to_server(adapter_service, server)
    server_info_pb2_grpc.add_ServerInfoServiceServicer_to_server(StaticServerInfoService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def client(server_target) -> Iterator[Client]:
    with Client(server_target, timeout=5.0, namespace="team-a") as c:
        c.retry_backoff = (0.01, 0.01, 0.01)
        yield c
