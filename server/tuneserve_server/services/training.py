"""Train preparation and the job flows: load the datasets a request names, run the data
checks (training/validation.py), queue the job; read, list, cancel and watch jobs."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import structlog

from tuneserve_server.domain.aliases import PromotionPolicy
from tuneserve_server.domain.errors import DataRejected, InvalidRequest, NotFound, Violations
from tuneserve_server.domain.jobs import Job, JobEvent, JobSpec, JobState
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.domain.naming import AdapterRef, namespace_of
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.audit import audit
from tuneserve_server.observability.metrics import JOBS_SUBMITTED
from tuneserve_server.services.adapters import resolve_version
from tuneserve_server.services.datasets import load_rows
from tuneserve_server.services.quotas import check_train, quotas_of
from tuneserve_server.services.readiness import require_ready
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.data_report import DataReport
from tuneserve_server.training.validation import TrainInput, prepare_job
from tuneserve_server.warm_start import read_init

log = structlog.get_logger("tuneserve.services")

WATCH_PAGE = 500


def prepare_train(store: JobStore, req: TrainInput, limits: TrainLimits) -> tuple[JobSpec, DataReport]:
    """Train's and ValidateDataset's whole data path: load the datasets the request names,
    then `prepare_job` (checks, split, report). Blocking."""
    namespace = namespace_of(req.namespace)
    # A dataset named beside inline examples is not loaded: prepare_job refuses the pair.
    files = [
        None
        if not dataset_id or inline
        else load_rows(
            store,
            namespace,
            dataset_id,
            task=req.task,
            max_text_chars=limits.max_text_chars,
            field=field,
        )
        for dataset_id, inline, field in (
            (req.dataset_id, req.train, "dataset_id"),
            (req.validation_dataset_id, req.validation, "validation_dataset_id"),
        )
    ]
    return prepare_job(req, limits, train_file=files[0], validation_file=files[1])


def pin_init_from(
    store: JobStore, adapter_store: AdapterStore, spec: JobSpec, req: TrainInput, limits: TrainLimits
) -> JobSpec:
    """Continued training: resolve `init_from` (name@version, name@alias or a bare name =
    `default`) to one stored version now, so the job starts from it even if the alias moves
    before a worker claims it, and check the request against it: same task and base model;
    the LoRA rank and target modules are the init version's (a request that sets others is
    INVALID_ARGUMENT on init_from), as is alpha unless the request sets it. Classification
    labels may be any set: the new version's labels are the union (labels the new data lacks
    keep their trained head rows). Blocking."""
    ref = AdapterRef.parse(spec.namespace, req.init_from, field="init_from")
    record = resolve_version(store, ref)
    v = Violations()
    # A preference (DPO) job starts from a causal-LM adapter (the usual SFT -> DPO), and its
    # adapters are causal-LM ones: compare task families.
    if record.task.family is not spec.task.family:
        v.add(
            "init_from",
            f"{record.name}@{record.version} is a {record.task.value} adapter; this job trains {spec.task.value}",
        )
    if record.base_model != limits.base_model:
        v.add(
            "init_from",
            f"{record.name}@{record.version} was trained on {record.base_model}, this server serves {limits.base_model}",
        )
    v.raise_if_any("invalid init_from")
    init = read_init(adapter_store.open(record.namespace, record.name, record.version))
    lora = spec.hyperparameters.lora
    asked_rank = req.lora.get("rank")
    asked_targets = tuple(sorted(req.lora.get("target_modules") or ()))
    if asked_rank is not None and int(asked_rank) != init.rank:
        v.add(
            "init_from",
            f"{record.name}@{record.version} has LoRA rank {init.rank}, the request asks for {asked_rank} (leave the rank unset to continue with {init.rank})",
        )
    if asked_targets and asked_targets != init.target_modules:
        v.add(
            "init_from",
            f"{record.name}@{record.version} targets {', '.join(init.target_modules)}, the request {', '.join(asked_targets)} (leave target_modules unset)",
        )
    v.raise_if_any("invalid init_from")
    alpha = lora.alpha if req.lora.get("alpha") is not None else init.alpha
    hyper = replace(
        spec.hyperparameters,
        lora=replace(lora, rank=init.rank, alpha=alpha, target_modules=init.target_modules),
    )
    return replace(
        spec,
        hyperparameters=hyper,
        init_from=f"{record.name}@{record.version}",
        init_from_requested=req.init_from,
    )


def pin_evaluation_set(store: JobStore, spec: JobSpec, limits: TrainLimits) -> JobSpec:
    """if_better: the rows the worker scores the new version and `default` on, fixed now so
    that every later gate of the adapter can use the same ones. `promotion.eval_dataset_id`
    when given (an uploaded dataset of the namespace); else the adapter's stored evaluation
    set: the validation rows of the job that trained its oldest live version (what its first
    version was validated on, kept in that job's spec); else (no such job, e.g. an imported
    first version, or a first version) this job's own validation rows. Blocking."""
    if spec.promotion.eval_dataset_id:
        parsed = load_rows(
            store,
            spec.namespace,
            spec.promotion.eval_dataset_id,
            task=spec.task,
            max_text_chars=limits.max_text_chars,
            field="promotion.eval_dataset_id",
        )
        rows = tuple(e for _, e in parsed.examples)
        if not rows:
            raise InvalidRequest.field("promotion.eval_dataset_id", "has no usable rows")
        if len(rows) > limits.max_train_examples:
            raise InvalidRequest.field(
                "promotion.eval_dataset_id", f"more than {limits.max_train_examples} rows"
            )
        return replace(
            spec, promotion_eval=rows, promotion_eval_source=f"dataset {spec.promotion.eval_dataset_id}"
        )
    versions = store.adapter_versions(spec.namespace, spec.adapter_name)
    for first in versions[:1]:
        try:
            stored = store.job_spec(spec.namespace, first.job_id)
        except NotFound:  # imported, or its job is gone
            break
        if stored.validation:
            source = f"the validation set of {first.name}@{first.version} (job {first.job_id})"
            return replace(spec, promotion_eval=stored.validation, promotion_eval_source=source)
    return replace(spec, promotion_eval_source="this job's validation set")


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: the request id was seen before; `job` is the one it queued
    data_report: dict[str, Any]  # the job's stored report (the first submission's)


class TrainingService:
    def __init__(
        self,
        store: JobStore,
        engine: InferenceEngine,
        *,
        watch_poll_s: float = 0.25,
        quotas: Quotas | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.watch_poll_s = watch_poll_s
        self.quotas = quotas if quotas is not None else quotas_of(engine.settings)

    async def submit(self, req: TrainInput) -> Submission:
        """Check the request and its data, then queue the job (idempotent on the request id).
        Quotas first: the namespace's active jobs, and its adapter versions counting the one
        this job would publish (QuotaExceeded before any data is read)."""
        require_ready(self.engine)
        namespace = namespace_of(req.namespace)
        usage = await asyncio.to_thread(self.store.namespace_usage, namespace)
        check_train(self.quotas, usage, namespace)
        spec, report = await asyncio.to_thread(prepare_train, self.store, req, self.engine.train_limits())
        if req.init_from:
            spec = await asyncio.to_thread(
                pin_init_from, self.store, self.engine.adapter_store, spec, req, self.engine.train_limits()
            )
        if spec.promotion.policy is PromotionPolicy.IF_BETTER:
            spec = await asyncio.to_thread(pin_evaluation_set, self.store, spec, self.engine.train_limits())
        job, created = await asyncio.to_thread(self.store.create_job, spec, report.to_dict())
        if created:
            JOBS_SUBMITTED.inc()
            audit("job.create", namespace=job.namespace, job_id=job.id, adapter=job.adapter_name)
            log.info(
                "job queued",
                job_id=job.id,
                train_examples=job.train_examples,
                data_warnings=len(report.warnings),
            )
        return Submission(job, created, job.data_report or report.to_dict())

    async def validate(self, req: TrainInput) -> DataReport:
        """Train's checks without a job: hard data errors come back in the report; a
        malformed request still raises."""
        require_ready(self.engine)
        try:
            _, report = await asyncio.to_thread(prepare_train, self.store, req, self.engine.train_limits())
        except DataRejected as rejected:
            report = DataReport.from_dict(rejected.report)
        return report

    async def get_job(self, namespace: str, job_id: str) -> Job:
        job = await asyncio.to_thread(self.store.get_job, namespace, job_id)
        if (
            job.state is JobState.SUCCEEDED
            and self.engine.catalog.latest(job.namespace, job.adapter_name) < job.adapter_version
        ):
            # Read-your-writes: whoever saw the job succeed here can predict with it next.
            await self.engine.refresh()
        return job

    async def list_jobs(
        self, namespace: str, *, states: list[JobState], adapter_name: str, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        return await asyncio.to_thread(
            functools.partial(
                self.store.list_jobs,
                namespace,
                states=states,
                adapter_name=adapter_name,
                page_size=page_size,
                page_token=page_token,
            )
        )

    async def cancel_job(self, namespace: str, job_id: str) -> Job:
        job = await asyncio.to_thread(self.store.cancel_job, namespace, job_id)
        audit("job.cancel", namespace=namespace, job_id=job_id)
        return job

    async def watch(self, namespace: str, job_id: str, after_sequence: int) -> AsyncIterator[JobEvent]:
        """Replays the log after `after_sequence`, then polls it until the job has ended and
        every event is sent. The store logs the final state in the same transaction that sets
        it, so once the job reads terminal, one more read holds everything."""
        after = after_sequence
        ended = False
        while True:
            events = await asyncio.to_thread(self.store.list_events, namespace, job_id, after, WATCH_PAGE)
            for event in events:
                yield event
                after = event.sequence
            if len(events) == WATCH_PAGE:
                continue
            if ended:
                return
            job = await asyncio.to_thread(self.store.get_job, namespace, job_id)
            if job.state.terminal:
                ended = True  # one more read, then done
                continue
            await asyncio.sleep(self.watch_poll_s)
