"""DatasetService: upload (client stream), get, list, delete, and the data checks on their own."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import replace

import structlog

from tuneserve.v1 import datasets_pb2, datasets_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.rpc import require_id, rpc
from tuneserve_server.config import Settings
from tuneserve_server.datasets import UploadSession, check_header, prepare_train
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.domain.errors import DataRejected, InvalidRequest, NotReady
from tuneserve_server.domain.naming import namespace_of
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.data_report import DataReport
from tuneserve_server.domain.jobs import OptimizerSettings

log = structlog.get_logger("tuneserve.api")


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, settings: Settings, store: JobStore, engine: InferenceEngine) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine

    @rpc
    async def UploadDataset(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        if not self.engine.ready:
            raise NotReady("the base model is still loading; retry shortly")
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidRequest.field("header", "the first message of an upload must be the header")
        header = convert.upload_header(first.header)
        header = replace(header, namespace=namespace_of(header.namespace, "header.namespace"))
        check_header(header, max_bytes=self.settings.max_dataset_bytes, served_task=self.engine.task)
        structlog.contextvars.bind_contextvars(upload_id=header.upload_id)
        session = UploadSession(self.store, header)
        done = await asyncio.to_thread(session.begin)
        if done is not None:  # this upload_id already finished: answer without reading on
            return datasets_pb2.UploadDatasetResponse(dataset=convert.dataset_pb(done), created=False)
        async for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidRequest.field("header", "only the first message may be a header")
            await asyncio.to_thread(session.add, message.chunk.offset, message.chunk.data)
        limits = self.engine.train_limits()
        dataset, created = await asyncio.to_thread(
            functools.partial(
                session.finish, max_text_chars=self.settings.max_text_chars,
                count_tokens=limits.count_tokens,
                max_seq_length=OptimizerSettings().max_seq_length,
            )
        )
        if created:
            log.info("dataset stored", dataset_id=dataset.id, rows=dataset.rows,
                     usable_rows=dataset.usable_rows, size_bytes=dataset.size_bytes)
        return datasets_pb2.UploadDatasetResponse(dataset=convert.dataset_pb(dataset), created=created)

    @rpc
    async def GetDataset(self, request, context):  # noqa: N802, ANN001, ANN201
        dataset = await asyncio.to_thread(
            self.store.get_dataset, namespace_of(request.namespace),
            require_id(request.dataset_id, "dataset_id"),
        )
        return datasets_pb2.GetDatasetResponse(dataset=convert.dataset_pb(dataset))

    @rpc
    async def ListDatasets(self, request, context):  # noqa: N802, ANN001, ANN201
        datasets, token = await asyncio.to_thread(
            functools.partial(
                self.store.list_datasets, namespace_of(request.namespace),
                page_size=request.page_size, page_token=request.page_token,
            )
        )
        return datasets_pb2.ListDatasetsResponse(
            datasets=[convert.dataset_pb(d) for d in datasets], next_page_token=token
        )

    @rpc
    async def DeleteDataset(self, request, context):  # noqa: N802, ANN001, ANN201
        await asyncio.to_thread(
            self.store.delete_dataset, namespace_of(request.namespace),
            require_id(request.dataset_id, "dataset_id"),
        )
        return datasets_pb2.DeleteDatasetResponse()

    @rpc
    async def ValidateDataset(self, request, context):  # noqa: N802, ANN001, ANN201
        """Train's checks without a job: hard data errors come back in the report (this call
        succeeds); a malformed request is still INVALID_ARGUMENT."""
        if not self.engine.ready:
            raise NotReady("the base model is still loading; retry shortly")
        try:
            _, report = await asyncio.to_thread(
                prepare_train, self.store, convert.validate_input(request), self.engine.train_limits()
            )
        except DataRejected as rejected:
            report = DataReport.from_dict(rejected.report)
        return datasets_pb2.ValidateDatasetResponse(report=convert.data_report_pb(report.to_dict()))
