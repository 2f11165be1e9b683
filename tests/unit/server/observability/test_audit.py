"""The audit log: known actions only, the call's identity from its context, never a secret."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from tuneserve_server.observability.audit import ACTIONS, audit


def test_an_event_carries_action_outcome_resource_and_the_calls_identity():
    bound = structlog.contextvars.bound_contextvars(request_id="req-9", tenant="teama", key_id="k1")
    with bound, capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        audit("job.cancel", namespace="teama", job_id="job-1")
    (event,) = logs
    assert event["audit_action"] == "job.cancel" and event["outcome"] == "ok"
    assert (event["namespace"], event["job_id"]) == ("teama", "job-1")
    assert (event["request_id"], event["tenant"], event["key_id"]) == ("req-9", "teama", "k1")


def test_unknown_actions_are_refused():
    assert {"key.create", "key.revoke", "auth.failed", "job.create", "job.cancel"} <= ACTIONS
    with pytest.raises(ValueError, match="unknown audit action"):
        audit("job.explode")
