"""DatasetService: upload (client stream), get, list, delete, and the data checks on their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from tuneserve.v1 import datasets_pb2, datasets_pb2_grpc
from tuneserve_server.api import convert
from tuneserve_server.api.auth_interceptor import namespace
from tuneserve_server.api.rpc import require_id, rpc
from tuneserve_server.services.datasets import DatasetService, UploadChunk, UploadPart
from tuneserve_server.services.training import TrainingService


async def _upload_parts(
    messages: AsyncIterator[datasets_pb2.UploadDatasetRequest],
) -> AsyncIterator[UploadPart]:
    """The stream's messages as the service reads them, converted one at a time as it asks:
    the first as a header, the rest as chunks (None: a message of the wrong kind)."""
    first = True
    async for message in messages:
        kind = message.WhichOneof("part")
        if first:
            if kind == "header":
                header = convert.upload_header(message.header)
                yield replace(header, namespace=namespace(header.namespace, "header.namespace"))
            else:
                yield None
            first = False
        else:
            yield UploadChunk(message.chunk.offset, message.chunk.data) if kind == "chunk" else None


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, datasets: DatasetService, training: TrainingService) -> None:
        self.datasets = datasets
        self.training = training

    @rpc
    async def UploadDataset(self, request_iterator, context):
        dataset, created = await self.datasets.upload(_upload_parts(request_iterator))
        return datasets_pb2.UploadDatasetResponse(dataset=convert.dataset_pb(dataset), created=created)

    @rpc
    async def GetDataset(self, request, context):
        dataset = await self.datasets.get(
            namespace(request.namespace), require_id(request.dataset_id, "dataset_id")
        )
        return datasets_pb2.GetDatasetResponse(dataset=convert.dataset_pb(dataset))

    @rpc
    async def ListDatasets(self, request, context):
        datasets, token = await self.datasets.list(
            namespace(request.namespace), page_size=request.page_size, page_token=request.page_token
        )
        return datasets_pb2.ListDatasetsResponse(
            datasets=[convert.dataset_pb(d) for d in datasets], next_page_token=token
        )

    @rpc
    async def DeleteDataset(self, request, context):
        await self.datasets.delete(namespace(request.namespace), require_id(request.dataset_id, "dataset_id"))
        return datasets_pb2.DeleteDatasetResponse()

    @rpc
    async def ListUploads(self, request, context):
        uploads, token = await self.datasets.list_uploads(
            namespace(request.namespace), page_size=request.page_size, page_token=request.page_token
        )
        return datasets_pb2.ListUploadsResponse(
            uploads=[convert.upload_pb(u) for u in uploads], next_page_token=token
        )

    @rpc
    async def DeleteUpload(self, request, context):
        await self.datasets.discard_upload(
            namespace(request.namespace), require_id(request.upload_id, "upload_id")
        )
        return datasets_pb2.DeleteUploadResponse()

    @rpc
    async def ValidateDataset(self, request, context):
        """Train's checks without a job: hard data errors come back in the report (this call
        succeeds); a malformed request is still INVALID_ARGUMENT."""
        checked = convert.validate_input(request)
        report = await self.training.validate(replace(checked, namespace=namespace(request.namespace)))
        return datasets_pb2.ValidateDatasetResponse(report=convert.data_report_pb(report.to_dict()))
