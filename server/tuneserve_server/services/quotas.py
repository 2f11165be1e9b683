"""Per-tenant quotas (a tenant is a namespace): the limits from the settings, and the checks
the services run where each resource is created. A refusal is QuotaExceeded (the API maps it
to RESOURCE_EXHAUSTED with google.rpc.QuotaFailure and RetryInfo); 0 means unlimited.

Where each quota is checked:

| quota | checked at | retry hint |
|---|---|---|
| active_jobs (QUEUED + RUNNING) | Train submission | yes: jobs finish |
| adapter_versions (published + the ones active jobs will publish) | Train submission | no: delete versions |
| dataset_bytes (stored datasets) | upload start, with the declared size | no: delete datasets |
| upload_bytes (unfinished uploads) | upload start (declared size) and every chunk | no: finish or discard uploads |
| pinned_adapters (this process's cache) | LoadAdapter with pin | no: unpin |
| queued_predict_rows | the batcher's admission (engine/batching.py) | yes: the queue drains |
| active_evaluations (QUEUED + RUNNING) | CreateEvaluation | yes: evaluations finish |
"""

from __future__ import annotations

from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import QuotaExceeded
from tuneserve_server.domain.tenancy import Quotas

# A tenant at its job quota waits for one of its jobs to end: a hint, not a promise.
JOBS_RETRY_S = 30.0


def quotas_of(settings: Settings) -> Quotas:
    return Quotas(
        active_jobs=settings.quota_active_jobs,
        dataset_bytes=settings.quota_dataset_bytes,
        upload_bytes=settings.quota_upload_bytes,
        adapter_versions=settings.quota_adapter_versions,
        pinned_adapters=settings.quota_pinned_adapters,
        queued_predict_rows=settings.quota_queued_predict_rows,
        active_evaluations=settings.quota_active_evaluations,
    )


def check(
    quota: str, limit: int, used: int, adding: int, namespace: str, what: str, *, retry_after_s: float = 0.0
) -> None:
    """Refuse when `used + adding` would pass `limit` (0: unlimited)."""
    if limit and used + adding > limit:
        hint = (
            f"retry in about {retry_after_s:g} s"
            if retry_after_s
            else "free some first (delete or discard), then retry"
        )
        raise QuotaExceeded(
            quota,
            limit,
            used,
            f"namespace {namespace!r} is at its {quota} quota: {used} of {limit} {what} used, "
            f"this request needs {adding} more; {hint}",
            retry_after_s,
        )


def check_train(quotas: Quotas, usage: dict[str, int], namespace: str) -> None:
    """Before a job is queued: one more active job, and one more adapter version when it
    succeeds (every active job will publish one, so they count already)."""
    check(
        "active_jobs",
        quotas.active_jobs,
        usage["active_jobs"],
        1,
        namespace,
        "queued + running jobs",
        retry_after_s=JOBS_RETRY_S,
    )
    check(
        "adapter_versions",
        quotas.adapter_versions,
        usage["adapter_versions"] + usage["active_jobs"],
        1,
        namespace,
        "adapter versions (stored, plus one per queued or running job)",
    )


def check_upload(
    quotas: Quotas, usage: dict[str, int], namespace: str, *, declared: int, adding: int
) -> None:
    """At an upload's start (`adding` = the bytes still to come) and per chunk (`adding` =
    the chunk): the file must fit the dataset quota once stored, and the bytes held by
    unfinished uploads must stay within theirs."""
    check(
        "dataset_bytes",
        quotas.dataset_bytes,
        usage["dataset_bytes"],
        declared,
        namespace,
        "bytes of stored datasets",
    )
    check(
        "upload_bytes",
        quotas.upload_bytes,
        usage["upload_bytes"],
        adding,
        namespace,
        "bytes of unfinished uploads",
    )


def check_evaluation(quotas: Quotas, usage: dict[str, int], namespace: str) -> None:
    """Before an evaluation is queued: one more active evaluation."""
    check(
        "active_evaluations",
        quotas.active_evaluations,
        usage["active_evaluations"],
        1,
        namespace,
        "queued + running evaluations",
        retry_after_s=JOBS_RETRY_S,
    )
