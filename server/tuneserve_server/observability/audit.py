"""The audit log: who did what to which resource, as structured events on the
`tuneserve.audit` logger (one JSON line each with log_format=json).

Every event carries the action, the outcome and the resource; the request id, tenant and key
id come from the call's context (the API binds them per RPC), never a secret."""

from __future__ import annotations

from typing import Any

import structlog

_log = structlog.get_logger("tuneserve.audit")

# key creation/revocation, failed authentication, job create/cancel, adapter import/export
# (weights entering or leaving the service), alias moves (what is served), adapter/dataset delete, and any action an admin
# takes in another tenant's namespace.
ACTIONS = frozenset(
    {
        "key.create",
        "key.revoke",
        "auth.failed",
        "job.create",
        "job.cancel",
        "adapter.delete",
        "alias.move",
        "adapter.export",
        "adapter.import",
        "dataset.delete",
        "admin.cross_tenant",
    }
)


def audit(action: str, *, outcome: str = "ok", **fields: Any) -> None:
    """Record one audit event; `fields` name the resource (namespace, job_id, adapter, ...)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    _log.info("audit", audit_action=action, outcome=outcome, **fields)
