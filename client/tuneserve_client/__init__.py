"""Python client for the tuneserve gRPC service."""

from tuneserve_client.client import DEFAULT_TARGET, Client
from tuneserve_client.datafiles import DataFileError, read_examples
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
from tuneserve_client.types import (
    Adapter,
    AdapterVersion,
    Classification,
    Job,
    LabelScore,
    LoadedAdapter,
)

__all__ = [
    "DEFAULT_TARGET",
    "Adapter",
    "AdapterVersion",
    "AlreadyExists",
    "Cancelled",
    "Classification",
    "Client",
    "DataFileError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "LabelScore",
    "LoadedAdapter",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TuneserveError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "read_examples",
]
