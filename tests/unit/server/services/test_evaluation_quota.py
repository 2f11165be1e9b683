"""The active_evaluations quota: a tenant's queued + running evaluations, checked at
CreateEvaluation, apart from its training jobs' active_jobs."""

from __future__ import annotations

import pytest

from tuneserve_server.domain.errors import QuotaExceeded
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.services.quotas import check_evaluation, check_train

USAGE = {
    "active_jobs": 0,
    "active_evaluations": 0,
    "adapter_versions": 0,
    "dataset_bytes": 0,
    "upload_bytes": 0,
}


def test_the_quota_refuses_one_more_at_the_limit_and_hints_a_retry():
    check_evaluation(Quotas(active_evaluations=2), {**USAGE, "active_evaluations": 1}, "ns")
    with pytest.raises(QuotaExceeded) as err:
        check_evaluation(Quotas(active_evaluations=2), {**USAGE, "active_evaluations": 2}, "ns")
    assert err.value.quota == "active_evaluations" and err.value.retry_after_s > 0
    assert "2 of 2 queued + running evaluations" in str(err.value)
    check_evaluation(
        Quotas(active_evaluations=0), {**USAGE, "active_evaluations": 10**6}, "ns"
    )  # 0: unlimited


def test_evaluations_do_not_count_against_the_job_quota():
    busy = {**USAGE, "active_evaluations": 50}
    check_train(Quotas(active_jobs=1, adapter_versions=1), busy, "ns")
