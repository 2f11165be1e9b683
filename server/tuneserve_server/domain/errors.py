"""Domain errors. The API layer maps each class to one gRPC status code (api/status_map.py);
nothing below the servicer knows about gRPC."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TuneserveError(Exception):
    """Base of every error a caller may see with its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(TuneserveError):
    """The request (or its data) is wrong; `violations` names the fields."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, field: str, description: str) -> InvalidRequest:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class Violations:
    """Field violations collected over a whole request, raised together: the message leads
    with the first field, so it reads on its own (`summary: field: description (and N more)`)."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def message(self, summary: str) -> str:
        first = self.items[0]
        more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
        return f"{summary}: {first.field}: {first.description}{more}"

    def raise_if_any(self, summary: str) -> None:
        if self.items:
            raise InvalidRequest(self.message(summary), self.items)


class NotFound(TuneserveError):
    pass


class AlreadyExists(TuneserveError):
    pass


class FailedPrecondition(TuneserveError):
    """The request is well formed but the system is not in a state to honour it."""


class CorruptAdapter(FailedPrecondition):
    """A stored adapter version fails its checksum manifest (a file changed, is missing, or
    is not listed); it is never loaded. The message names the version and the file."""


class CapacityExceeded(TuneserveError):
    """A queue or memory bound is reached; the caller should back off and retry."""


class Unauthenticated(TuneserveError):
    """The credential is missing, malformed, expired or revoked."""


class PermissionDenied(TuneserveError):
    """The caller is who it says, but may not do this (a role it lacks, another tenant)."""


class QuotaExceeded(CapacityExceeded):
    """A tenant's quota is used up. `quota` names it (e.g. "active_jobs"), `limit` and `used`
    say by how much, `retry_after_s` when trying again may help (0: not before something is
    deleted)."""

    def __init__(self, quota: str, limit: int, used: int, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.quota, self.limit, self.used, self.retry_after_s = quota, limit, used, retry_after_s


class NotReady(TuneserveError):
    """The service is starting or draining."""


class LeaseLost(TuneserveError):
    """A worker no longer holds the job it is writing to (its lease expired and another
    worker took it, or the job finished). Internal: the worker stops; no caller sees it."""


class DataRejected(InvalidRequest):
    """Training data failed a hard check. `report` is the whole data report (as
    DataReport.to_dict()), so the caller sees every problem, warnings included."""

    def __init__(self, message: str, violations: list[FieldViolation], report: dict[str, object]) -> None:
        super().__init__(message, violations)
        self.report = report
