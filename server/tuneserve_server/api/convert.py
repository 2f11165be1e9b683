"""Protobuf <-> domain conversion. With the servicers, the only code that touches *_pb2 types."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from tuneserve.v1 import adapters_pb2, common_pb2, datasets_pb2, inference_pb2, training_pb2
from tuneserve_server.domain.errors import FieldViolation, InvalidRequest
from tuneserve_server.domain.jobs import (
    CausalExample,
    ChatTurn,
    EventType,
    Hyperparameters,
    Job,
    JobEvent,
    JobProgress,
    JobState,
    PreferenceExample,
    TaskType,
)
from tuneserve_server.domain.records import AdapterVersionRecord, DatasetRecord, UploadState
from tuneserve_server.domain.uncertainty import ConformalMode, ConformalScore, UncertaintyRequest
from tuneserve_server.engine.classifier import ClassScores
from tuneserve_server.engine.generation import (
    FinishReason,
    GenerationResult,
    SamplingParams,
    TokenLogprob,
)
from tuneserve_server.services import sampling
from tuneserve_server.services.datasets import UploadHeader
from tuneserve_server.training.data_report import DataReport
from tuneserve_server.training.validation import InlineExample, TrainInput

TASK_TO_PB = {
    TaskType.CLASSIFICATION: common_pb2.TASK_TYPE_CLASSIFICATION,
    TaskType.CAUSAL_LM: common_pb2.TASK_TYPE_CAUSAL_LM,
    TaskType.PREFERENCE: common_pb2.TASK_TYPE_PREFERENCE,
}
TASK_FROM_PB = {v: k for k, v in TASK_TO_PB.items()}
STATE_TO_PB = {s: training_pb2.JobState.Value(f"JOB_STATE_{s.value}") for s in JobState}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _example(ex: common_pb2.Example) -> InlineExample:
    kind = ex.WhichOneof("example")
    if kind == "classification":
        return ex.classification.text, ex.classification.label
    if kind == "causal_lm":
        lm = ex.causal_lm
        return CausalExample(
            prompt=lm.prompt,
            completion=lm.completion,
            messages=tuple(ChatTurn(m.role, m.content) for m in lm.messages),
        )
    if kind == "preference":
        pref = ex.preference
        return PreferenceExample(
            prompt=pref.prompt,
            chosen=pref.chosen,
            rejected=pref.rejected,
            messages=tuple(ChatTurn(m.role, m.content) for m in pref.messages),
        )
    return None


def _task(value: int, field: str = "task") -> TaskType | None:
    if value == common_pb2.TASK_TYPE_UNSPECIFIED:
        return None
    if value in TASK_FROM_PB:
        return TASK_FROM_PB[value]
    raise InvalidRequest.field(field, f"unknown task type {value}")


# The hyperparameters, read from the proto: Hyperparameters.<section>.<field> is the domain's
# Hyperparameters.<section>.<field> and TrainInput.<section>[<field>], by the same names (the
# one mapping, identity; tests/unit/client/test_hyperparameters.py checks that both sides have
# the same fields). The client's flags and keywords come from the same descriptor.
HYPERPARAMETER_FIELDS: tuple[tuple[str, tuple[Any, ...]], ...] = tuple(
    (section.name, tuple(section.message_type.fields))
    for section in common_pb2.Hyperparameters.DESCRIPTOR.fields
)


def hyperparameter_values(hp: common_pb2.Hyperparameters) -> dict[str, dict[str, Any]]:
    """Per section, what the caller gave: a field with presence only when set (unset: the
    server's default), a repeated field as a list, a plain field (its zero value: the default)
    always."""
    out: dict[str, dict[str, Any]] = {}
    for section, fields in HYPERPARAMETER_FIELDS:
        msg = getattr(hp, section)
        values: dict[str, Any] = {}
        for f in fields:
            if f.is_repeated:
                values[f.name] = list(getattr(msg, f.name))
            elif not f.has_presence or msg.HasField(f.name):
                values[f.name] = getattr(msg, f.name)
        out[section] = values
    return out


def train_input(req: training_pb2.TrainRequest) -> TrainInput:
    task = _task(req.task)
    return TrainInput(
        namespace=req.namespace,
        adapter_name=req.adapter_name,
        task=task,
        request_id=req.request_id,
        train=[_example(e) for e in req.training_examples],
        validation=[_example(e) for e in req.validation_examples],
        validation_fraction=req.validation_fraction if req.HasField("validation_fraction") else None,
        dataset_id=req.dataset_id,
        validation_dataset_id=req.validation_dataset_id,
        **hyperparameter_values(req.hyperparameters),
        promotion=_promotion_values(req),
        init_from=req.init_from,
    )


def _promotion_values(req: training_pb2.TrainRequest) -> dict[str, Any]:
    from tuneserve_server.api.convert_aliases import promotion_values  # it imports this module

    return promotion_values(req)


def validate_input(req: datasets_pb2.ValidateDatasetRequest) -> TrainInput:
    """ValidateDataset runs Train's checks: the same input, with a placeholder adapter name
    and request id (nothing is queued)."""
    optimizer = {"max_seq_length": req.max_seq_length} if req.HasField("max_seq_length") else {}
    return TrainInput(
        namespace=req.namespace,
        adapter_name="validate",
        task=_task(req.task),
        request_id="validate",
        train=[_example(e) for e in req.training_examples],
        validation=[_example(e) for e in req.validation_examples],
        validation_fraction=req.validation_fraction if req.HasField("validation_fraction") else None,
        optimizer=optimizer,
        dataset_id=req.dataset_id,
        validation_dataset_id=req.validation_dataset_id,
    )


def hyperparameters_pb(hp: Hyperparameters) -> common_pb2.Hyperparameters:
    """Every field, defaults filled in (each section present, each optional field set)."""
    out = common_pb2.Hyperparameters()
    for section, fields in HYPERPARAMETER_FIELDS:
        settings, msg = getattr(hp, section), getattr(out, section)
        msg.SetInParent()
        for f in fields:
            value = getattr(settings, f.name)
            if f.is_repeated:
                getattr(msg, f.name).extend(value)
            else:
                setattr(msg, f.name, value)
    return out


def progress_pb(p: JobProgress) -> training_pb2.JobProgress:
    out = training_pb2.JobProgress(step=p.step, total_steps=p.total_steps, epoch=p.epoch)
    for name in ("train_loss", "learning_rate", "examples_per_second", "eta_seconds"):
        value = getattr(p, name)
        if value is not None:
            setattr(out, name, value)
    return out


def data_report_pb(data: dict[str, Any]) -> datasets_pb2.DataReport:
    r = DataReport.from_dict(data)
    return datasets_pb2.DataReport(
        total_rows=r.total_rows,
        usable_rows=r.usable_rows,
        train_rows=r.train_rows,
        validation_rows=r.validation_rows,
        dropped=[
            datasets_pb2.DroppedRows(reason=d.reason, count=d.count, rows=list(d.rows)) for d in r.dropped
        ],
        labels=[
            datasets_pb2.LabelCount(label=c.label, train=c.train, validation=c.validation) for c in r.labels
        ],
        imbalance_ratio=r.imbalance_ratio,
        exact_duplicates=r.exact_duplicates,
        near_duplicates=r.near_duplicates,
        conflicting_texts=r.conflicting_texts,
        leaked_validation_rows=r.leaked_validation_rows,
        truncated_rows=r.truncated_rows,
        max_tokens=r.max_tokens,
        mean_tokens=r.mean_tokens,
        issues=[
            datasets_pb2.DataIssue(
                severity=datasets_pb2.IssueSeverity.Value(f"ISSUE_SEVERITY_{i.severity.value}"),
                code=i.code,
                message=i.message,
                rows=list(i.rows),
            )
            for i in r.issues
        ],
        ok=r.ok,
    )


def job_pb(job: Job) -> training_pb2.Job:
    return training_pb2.Job(
        id=job.id,
        namespace=job.namespace,
        adapter_name=job.adapter_name,
        task=TASK_TO_PB[job.task],
        state=STATE_TO_PB[job.state],
        created_at=_ts(job.created_at),
        started_at=_ts(job.started_at),
        finished_at=_ts(job.finished_at),
        updated_at=_ts(job.updated_at),
        progress=progress_pb(job.progress),
        metrics=job.metrics,
        error=job.error,
        adapter_version=job.adapter_version,
        hyperparameters=hyperparameters_pb(job.hyperparameters),
        request_id=job.request_id,
        train_examples=job.train_examples,
        validation_examples=job.validation_examples,
        attempts=job.attempts,
        data_report=data_report_pb(job.data_report) if job.data_report else None,
        dataset_id=job.dataset_id,
        validation_dataset_id=job.validation_dataset_id,
        sample_generations=[training_pb2.SampleGeneration(**s) for s in job.sample_generations],
        resumed_from_step=job.resumed_from_step,
        **_job_promotion_fields(job),
    )


def _job_promotion_fields(job: Job) -> dict[str, Any]:
    from tuneserve_server.api.convert_aliases import promotion_pb, promotion_result_pb

    return {
        "promotion": promotion_pb(job.promotion),
        "init_from": job.init_from,
        "init_from_requested": job.init_from_requested,
        "promotion_result": promotion_result_pb(job.promotion_result),
    }


EVENT_TYPE_TO_PB = {t: training_pb2.JobEventType.Value(f"JOB_EVENT_TYPE_{t.name}") for t in EventType}


def event_pb(event: JobEvent) -> training_pb2.JobEvent:
    return training_pb2.JobEvent(
        sequence=event.sequence,
        job_id=event.job_id,
        time=_ts(event.time),
        type=EVENT_TYPE_TO_PB[event.type],
        state=STATE_TO_PB[event.state] if event.state else training_pb2.JOB_STATE_UNSPECIFIED,
        progress=progress_pb(event.progress) if event.progress else None,
        metrics=event.metrics,
        message=event.message,
    )


FORMAT_TO_PB = {"jsonl": datasets_pb2.DATASET_FORMAT_JSONL, "csv": datasets_pb2.DATASET_FORMAT_CSV}
FORMAT_FROM_PB = {v: k for k, v in FORMAT_TO_PB.items()}


def dataset_pb(d: DatasetRecord) -> datasets_pb2.Dataset:
    return datasets_pb2.Dataset(
        id=d.id,
        namespace=d.namespace,
        display_name=d.display_name,
        task=TASK_TO_PB[d.task],
        format=FORMAT_TO_PB[d.format],
        size_bytes=d.size_bytes,
        sha256=d.sha256,
        rows=d.rows,
        usable_rows=d.usable_rows,
        created_at=_ts(d.created_at),
        report=data_report_pb(d.report) if d.report else None,
    )


def upload_pb(u: UploadState) -> datasets_pb2.Upload:
    return datasets_pb2.Upload(
        upload_id=u.upload_id,
        display_name=u.display_name,
        received_bytes=u.received,
        size_bytes=u.declared_bytes,
        last_chunk_time=_ts(u.touched_at),
        expire_time=_ts(u.expires_at),
    )


def upload_header(h: datasets_pb2.DatasetUploadHeader) -> UploadHeader:
    return UploadHeader(
        namespace=h.namespace,
        display_name=h.display_name,
        task=_task(h.task, "header.task"),
        format=FORMAT_FROM_PB.get(h.format, ""),
        size_bytes=h.size_bytes,
        sha256=h.sha256,
        upload_id=h.upload_id,
        text_field=h.text_field,
        label_field=h.label_field,
    )


def job_states(values) -> list[JobState]:
    out = []
    for i, value in enumerate(values):
        if value not in STATE_FROM_PB:
            raise InvalidRequest.field(f"states[{i}]", f"unknown job state {value}")
        out.append(STATE_FROM_PB[value])
    return out


def classification_pb(scores: ClassScores, with_probabilities: bool) -> inference_pb2.Prediction:
    label, score = scores.top()
    out = inference_pb2.Classification(label=label, score=score)
    if with_probabilities:
        ranked = sorted(zip(scores.labels, scores.probabilities, strict=True), key=lambda p: -p[1])
        out.probabilities.extend(inference_pb2.LabelScore(label=lab, score=p) for lab, p in ranked)
    if scores.prediction_set is not None:
        out.prediction_set.extend(scores.prediction_set)
    if scores.ood_score is not None:
        out.abstain, out.abstain_reason = scores.abstain, scores.abstain_reason
        out.out_of_domain, out.ood_score = scores.out_of_domain, scores.ood_score
    return inference_pb2.Prediction(classification=out)


_SCORE_FROM_PB = {
    inference_pb2.CONFORMAL_SCORE_UNSPECIFIED: ConformalScore.LAC,
    inference_pb2.CONFORMAL_SCORE_LAC: ConformalScore.LAC,
    inference_pb2.CONFORMAL_SCORE_APS: ConformalScore.APS,
}
_MODE_FROM_PB = {
    inference_pb2.CONFORMAL_MODE_UNSPECIFIED: ConformalMode.AUTO,
    inference_pb2.CONFORMAL_MODE_MARGINAL: ConformalMode.MARGINAL,
    inference_pb2.CONFORMAL_MODE_MONDRIAN: ConformalMode.MONDRIAN,
}
CONFORMAL_MODE_TO_PB = {
    ConformalMode.MARGINAL: inference_pb2.CONFORMAL_MODE_MARGINAL,
    ConformalMode.MONDRIAN: inference_pb2.CONFORMAL_MODE_MONDRIAN,
}


def uncertainty_request(request: inference_pb2.PredictRequest) -> UncertaintyRequest:
    """A PredictRequest's uncertainty options, every violation named by its field."""
    problems: list[FieldViolation] = []
    level = request.confidence_level if request.HasField("confidence_level") else None
    if level is not None and not (math.isfinite(level) and 0 < level < 1):
        problems.append(FieldViolation("confidence_level", "must be in (0, 1), e.g. 0.9"))
    score = _SCORE_FROM_PB.get(request.conformal_score)
    if score is None:
        problems.append(FieldViolation("conformal_score", "unknown value; one of LAC, APS"))
    mode = _MODE_FROM_PB.get(request.conformal_mode)
    if mode is None:
        problems.append(FieldViolation("conformal_mode", "unknown value; one of MARGINAL, MONDRIAN"))
    if problems:
        raise InvalidRequest("invalid uncertainty options", problems)
    return UncertaintyRequest(level, score, mode, request.return_uncertainty)  # type: ignore[arg-type]


Residency = dict[tuple[str, str, int], tuple[bool, float, int]]  # key -> (pinned, last_used, bytes)


def _version_pb(r: AdapterVersionRecord, residency: Residency) -> adapters_pb2.AdapterVersion:
    here = residency.get((r.namespace, r.name, r.version))
    out = adapters_pb2.AdapterVersion(
        version=r.version,
        job_id=r.job_id,
        created_at=_ts(r.created_at),
        labels=list(r.labels),
        metrics=r.metrics,
        lora=common_pb2.LoraConfig(rank=r.lora_rank),
        size_bytes=r.size_bytes,
        resident=here is not None,
        pinned=bool(here and here[0]),
    )
    if here is not None:
        out.last_used.FromDatetime(datetime.fromtimestamp(here[1], UTC))
    return out


def adapter_pb(records: list[AdapterVersionRecord], residency: Residency) -> adapters_pb2.Adapter:
    last = records[-1]
    return adapters_pb2.Adapter(
        namespace=last.namespace,
        name=last.name,
        task=TASK_TO_PB[last.task],
        base_model=last.base_model,
        latest_version=last.version,
        versions=[_version_pb(r, residency) for r in records],
    )


# ---------------------------------------------------------------- generation (causal LM)
FINISH_TO_PB = {
    FinishReason.LENGTH: inference_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: inference_pb2.FINISH_REASON_STOP,
    FinishReason.EOS: inference_pb2.FINISH_REASON_EOS,
}


def sampling_params(
    gp: inference_pb2.GenerationParams, *, default_max_new_tokens: int, max_new_tokens_limit: int
) -> SamplingParams:
    """GenerationParams -> SamplingParams (services/sampling.py checks), every violation named
    by its field path (`generation.top_p`)."""
    return sampling.sampling_params(
        sampling.SamplingRequest(
            max_new_tokens=gp.max_new_tokens if gp.HasField("max_new_tokens") else None,
            temperature=gp.temperature if gp.HasField("temperature") else None,
            top_p=gp.top_p if gp.HasField("top_p") else None,
            top_k=gp.top_k if gp.HasField("top_k") else None,
            stop=tuple(gp.stop),
            seed=gp.seed if gp.HasField("seed") else None,
            raw_prompt=gp.raw_prompt,
            logprobs=gp.logprobs,
            top_logprobs=gp.top_logprobs if gp.HasField("top_logprobs") else None,
        ),
        default_max_new_tokens=default_max_new_tokens,
        max_new_tokens_limit=max_new_tokens_limit,
    )


def chat_turns(messages) -> tuple[ChatTurn, ...]:
    """Repeated ChatMessage -> chat turns (the service checks roles and sizes)."""
    return tuple(ChatTurn(m.role, m.content) for m in messages)


def token_logprob_pb(lp: TokenLogprob) -> inference_pb2.TokenLogprob:
    return inference_pb2.TokenLogprob(
        token_id=lp.token_id,
        token=lp.token,
        logprob=lp.logprob,
        top_logprobs=[inference_pb2.TopLogprob(token_id=t, token=s, logprob=v) for t, s, v in lp.top],
    )


def generation_pb(result: GenerationResult, *, with_logprobs: bool = True) -> inference_pb2.Generation:
    return inference_pb2.Generation(
        text=result.text,
        finish_reason=FINISH_TO_PB[result.finish_reason],
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        logprobs=[token_logprob_pb(lp) for lp in result.logprobs] if with_logprobs else [],
    )
