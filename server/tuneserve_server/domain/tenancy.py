"""Who is calling: tenants, roles, the principal a credential proves, API key records, and
per-tenant quotas. A tenant is a namespace: every job, dataset and adapter belongs to one."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Role(str, enum.Enum):
    PREDICT = "predict"  # Predict, PredictStream, reading adapters
    TRAIN = "train"  # Train, jobs, datasets, deleting adapters (includes predict)
    ADMIN = "admin"  # any tenant, API keys


@dataclass(frozen=True)
class Principal:
    """The identity a credential proved. `via` is "api_key", "jwt", "mtls" or "none"."""

    tenant: str
    roles: frozenset[Role]
    key_id: str = ""
    via: str = "api_key"

    def has(self, role: Role) -> bool:
        if Role.ADMIN in self.roles:
            return True
        if role is Role.PREDICT:
            return bool(self.roles & {Role.PREDICT, Role.TRAIN})
        return role in self.roles


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored API key: only a salted hash of its secret is kept."""

    key_id: str
    tenant: str
    roles: frozenset[Role]
    salt: bytes
    secret_hash: bytes
    description: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Quotas:
    """Per-tenant limits (0: unlimited)."""

    active_jobs: int = 20  # QUEUED + RUNNING
    dataset_bytes: int = 1024 * 1024 * 1024
    upload_bytes: int = 256 * 1024 * 1024  # unfinished uploads
    adapter_versions: int = 200
    pinned_adapters: int = 4
    queued_predict_rows: int = 2048
    active_evaluations: int = 4  # QUEUED + RUNNING evaluations
    extra: dict[str, int] = field(default_factory=dict)
