"""Python client for the tuneserve gRPC service."""

from tuneserve_client.client import DEFAULT_TARGET, Client, tls_credentials
from tuneserve_client.datafiles import DataFileError, read_causal_examples, read_examples
from tuneserve_client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TuneserveError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from tuneserve_client.hyperparameters import HYPERPARAMETERS, Hyperparameter
from tuneserve_client.reports import DataIssue, DataReport, Dataset, JobEvent
from tuneserve_client.types import (
    Adapter,
    AdapterVersion,
    Classification,
    Generation,
    GenerationStream,
    Job,
    LabelScore,
    LoadedAdapter,
    SampleGeneration,
)

__all__ = [
    "DEFAULT_TARGET",
    "HYPERPARAMETERS",
    "Adapter",
    "AdapterVersion",
    "AlreadyExists",
    "Cancelled",
    "Classification",
    "Client",
    "DataFileError",
    "DataIssue",
    "DataReport",
    "Dataset",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Generation",
    "GenerationStream",
    "Hyperparameter",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobEvent",
    "LabelScore",
    "LoadedAdapter",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SampleGeneration",
    "TuneserveError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "read_causal_examples",
    "read_examples",
    "tls_credentials",
]
