"""Application layer: the flows that span stores and the engine (dataset intake, train
preparation and job submission, adapter listing, deletion, export and import, prediction,
server info). Servicers make
one call in here per RPC; nothing here knows gRPC or the generated protobuf code.

`Services` is the bundle the composition root (app.py) builds and hands to the API server."""

from __future__ import annotations

from dataclasses import dataclass

from tuneserve_server.services.adapter_transfer import AdapterTransferService
from tuneserve_server.services.adapters import AdapterService
from tuneserve_server.services.datasets import DatasetService
from tuneserve_server.services.evaluations import EvaluationService
from tuneserve_server.services.inference import PredictionService
from tuneserve_server.services.server_info import ServerInfoService
from tuneserve_server.services.training import TrainingService


@dataclass(frozen=True)
class Services:
    training: TrainingService
    datasets: DatasetService
    adapters: AdapterService
    prediction: PredictionService
    server_info: ServerInfoService
    transfer: AdapterTransferService
    evaluations: EvaluationService | None = None
