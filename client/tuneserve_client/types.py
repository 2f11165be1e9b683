"""Plain result types returned by the client, and their conversion from protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from datetime import datetime

from tuneserve.v1 import adapters_pb2, common_pb2, inference_pb2, server_info_pb2, training_pb2
from tuneserve_client._pb import enum_name, time_of
from tuneserve_client.aliases import PromotionResult, policy_from_pb, promotion_result_from_pb
from tuneserve_client.reports import DataReport, data_report_from_pb

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TASKS = ("classification", "causal_lm", "preference")

_STATE_PREFIX = "JOB_STATE_"
_TASK_PREFIX = "TASK_TYPE_"


@dataclass(frozen=True)
class Job:
    """A training job. `state` is one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED."""

    id: str
    namespace: str
    adapter_name: str
    task: str
    state: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    train_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    adapter_version: int = 0
    request_id: str = ""
    train_examples: int = 0
    validation_examples: int = 0
    attempts: int = 0
    learning_rate: float | None = None
    examples_per_second: float | None = None
    eta_seconds: float | None = None
    # The data checks the job passed (warnings included).
    data_report: DataReport | None = None
    dataset_id: str = ""
    validation_dataset_id: str = ""
    # The step the last attempt resumed from after a worker was lost (0: from scratch).
    resumed_from_step: int = 0
    # Causal LM: what the trained adapter wrote for a few validation prompts.
    sample_generations: tuple[SampleGeneration, ...] = ()
    # "always", "manual" or "if_better"; once SUCCEEDED, what happened to `default`.
    promotion_policy: str = "always"
    promotion_result: PromotionResult | None = None
    # Continued training: the version the job started from ("name@3") and what was asked.
    init_from: str = ""
    init_from_requested: str = ""

    @property
    def done(self) -> bool:
        """True once the job is SUCCEEDED, FAILED or CANCELLED."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The predicted label, its probability and (when asked for) every label's, highest first."""

    label: str
    score: float
    probabilities: list[LabelScore] = field(default_factory=list)
    # With `confidence=`: the conformal prediction set (most probable first) and the
    # calibration it was built with ("marginal" or "mondrian").
    prediction_set: list[str] | None = None
    conformal_mode: str = ""
    # With `uncertainty=True`: whether to hand the text to a person, and why.
    abstain: bool | None = None
    abstain_reason: str = ""
    out_of_domain: bool | None = None
    ood_score: float | None = None
    # The row's id for submit_feedback ("" for the base model or with ids off on the server).
    prediction_id: str = ""


@dataclass(frozen=True)
class AdapterVersion:
    version: int
    job_id: str
    created_at: datetime | None
    labels: list[str]
    metrics: dict[str, float]
    lora_rank: int | None
    size_bytes: int
    resident: bool
    pinned: bool = False
    last_used: datetime | None = None
    aliases: tuple[str, ...] = ()  # the aliases pointing at this version
    init_from: str = ""  # lineage: the version it was trained from ("" from scratch)
    # GetAdapter only: live quality from feedback on this version's predictions.
    feedback: FeedbackStats | None = None


@dataclass(frozen=True)
class FeedbackStats:
    """Feedback on one adapter version: `answered` classification predictions (a label or
    "correct"), how many were `correct`, `accuracy` = correct / answered; ratings; corrected
    generations."""

    answered: int
    correct: int
    accuracy: float
    rated: int
    mean_rating: float
    corrected: int


@dataclass(frozen=True)
class LoadedAdapter:
    """What LoadAdapter made resident on the server that answered."""

    name: str
    version: int
    pinned: bool
    size_bytes: int
    load_seconds: float


@dataclass(frozen=True)
class ExportedAdapter:
    """An adapter version ExportAdapter wrote into `directory` (peft files + tuneserve's)."""

    name: str
    version: int
    directory: str
    files: list[str]
    size_bytes: int  # of the .tar.gz as sent
    sha256: str


@dataclass(frozen=True)
class Adapter:
    """A named adapter and its versions, oldest first."""

    namespace: str
    name: str
    task: str
    base_model: str
    versions: list[AdapterVersion]
    latest_version: int
    # alias -> version; "default" is what the bare name serves (default_version).
    aliases: dict[str, int] = field(default_factory=dict)
    default_version: int = 0


# --- enums -------------------------------------------------------------------------------


def task_from_pb(value: int) -> str:
    """TASK_TYPE_CAUSAL_LM -> "causal_lm"."""
    return enum_name(common_pb2.TaskType, value, _TASK_PREFIX).lower()


def task_to_pb(task: str) -> int:
    """ "classification" / "causal_lm" (case-insensitive) -> TaskType value."""
    name = _TASK_PREFIX + task.strip().upper()
    try:
        return common_pb2.TaskType.Value(name)
    except ValueError:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}") from None


def state_from_pb(value: int) -> str:
    """JOB_STATE_RUNNING -> "RUNNING"."""
    return enum_name(training_pb2.JobState, value, _STATE_PREFIX)


def state_to_pb(state: str) -> int:
    """ "running", "RUNNING" or "JOB_STATE_RUNNING" -> JobState value."""
    name = state.strip().upper()
    if not name.startswith(_STATE_PREFIX):
        name = _STATE_PREFIX + name
    if name[len(_STATE_PREFIX) :] not in JOB_STATES:
        raise ValueError(f"unknown job state {state!r}: expected one of {', '.join(JOB_STATES)}")
    return training_pb2.JobState.Value(name)


# --- messages ----------------------------------------------------------------------------


def job_from_pb(pb: training_pb2.Job) -> Job:
    progress = pb.progress
    return Job(
        id=pb.id,
        namespace=pb.namespace,
        adapter_name=pb.adapter_name,
        task=task_from_pb(pb.task),
        state=state_from_pb(pb.state),
        created_at=time_of(pb, "created_at"),
        started_at=time_of(pb, "started_at"),
        finished_at=time_of(pb, "finished_at"),
        updated_at=time_of(pb, "updated_at"),
        step=progress.step,
        total_steps=progress.total_steps,
        epoch=progress.epoch,
        train_loss=progress.train_loss if progress.HasField("train_loss") else None,
        metrics=dict(pb.metrics),
        error=pb.error,
        adapter_version=pb.adapter_version,
        request_id=pb.request_id,
        train_examples=pb.train_examples,
        validation_examples=pb.validation_examples,
        attempts=pb.attempts,
        learning_rate=progress.learning_rate if progress.HasField("learning_rate") else None,
        examples_per_second=(
            progress.examples_per_second if progress.HasField("examples_per_second") else None
        ),
        eta_seconds=progress.eta_seconds if progress.HasField("eta_seconds") else None,
        data_report=data_report_from_pb(pb.data_report) if pb.HasField("data_report") else None,
        dataset_id=pb.dataset_id,
        validation_dataset_id=pb.validation_dataset_id,
        resumed_from_step=pb.resumed_from_step,
        sample_generations=tuple(
            SampleGeneration(g.prompt, g.reference, g.generated) for g in pb.sample_generations
        ),
        promotion_policy=policy_from_pb(pb),
        promotion_result=promotion_result_from_pb(pb),
        init_from=pb.init_from,
        init_from_requested=pb.init_from_requested,
    )


def classification_from_pb(
    pb: inference_pb2.Classification, *, conformal_mode: str = "", uncertainty: bool = False
) -> Classification:
    """`conformal_mode` ("marginal"/"mondrian"): the response carried sets; `uncertainty`:
    the request asked for abstain / out-of-domain outputs (otherwise they stay None)."""
    return Classification(
        label=pb.label,
        score=pb.score,
        probabilities=[LabelScore(p.label, p.score) for p in pb.probabilities],
        prediction_set=list(pb.prediction_set) if conformal_mode else None,
        conformal_mode=conformal_mode,
        abstain=pb.abstain if uncertainty else None,
        abstain_reason=pb.abstain_reason,
        out_of_domain=pb.out_of_domain if uncertainty else None,
        ood_score=pb.ood_score if uncertainty else None,
    )


def prediction_from_pb(
    pb: inference_pb2.Prediction, *, conformal_mode: str = "", uncertainty: bool = False
) -> Classification | Generation:
    kind = pb.WhichOneof("output")
    if kind == "generation":  # a causal-LM server answers predict() with generations
        return generation_from_pb(pb)
    if kind != "classification":
        raise ValueError(f"unsupported prediction output {kind!r}; upgrade the client")
    out = classification_from_pb(pb.classification, conformal_mode=conformal_mode, uncertainty=uncertainty)
    return replace(out, prediction_id=pb.prediction_id) if pb.prediction_id else out


def adapter_version_from_pb(pb: adapters_pb2.AdapterVersion) -> AdapterVersion:
    return AdapterVersion(
        version=pb.version,
        job_id=pb.job_id,
        created_at=time_of(pb, "created_at"),
        labels=list(pb.labels),
        metrics=dict(pb.metrics),
        lora_rank=pb.lora.rank if pb.HasField("lora") and pb.lora.HasField("rank") else None,
        size_bytes=pb.size_bytes,
        resident=pb.resident,
        pinned=pb.pinned,
        last_used=time_of(pb, "last_used"),
        feedback=FeedbackStats(
            answered=pb.feedback.answered,
            correct=pb.feedback.correct,
            accuracy=pb.feedback.accuracy,
            rated=pb.feedback.rated,
            mean_rating=pb.feedback.mean_rating,
            corrected=pb.feedback.corrected,
        )
        if pb.HasField("feedback")
        else None,
        aliases=tuple(pb.aliases),
        init_from=pb.lineage.init_from,
    )


def adapter_from_pb(pb: adapters_pb2.Adapter) -> Adapter:
    return Adapter(
        namespace=pb.namespace,
        name=pb.name,
        task=task_from_pb(pb.task),
        base_model=pb.base_model,
        versions=[adapter_version_from_pb(v) for v in pb.versions],
        latest_version=pb.latest_version,
        aliases={a.alias: a.version for a in pb.aliases},
        default_version=pb.default_version,
    )


# ---------------------------------------------------------------- generation (causal LM)
FINISH_REASONS = {1: "length", 2: "stop", 3: "eos"}


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and (with top_logprobs) the most
    likely tokens at its step as (token, logprob) pairs, most likely first."""

    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, float], ...] = ()
    top_ids: tuple[int, ...] = ()


def token_logprob_from_pb(pb: inference_pb2.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(
        token=pb.token,
        token_id=pb.token_id,
        logprob=pb.logprob,
        top=tuple((t.token, t.logprob) for t in pb.top_logprobs),
        top_ids=tuple(t.token_id for t in pb.top_logprobs),
    )


@dataclass(frozen=True)
class Generation:
    """A completion: its text, why it ended ("length", "stop" or "eos") and token counts;
    with logprobs=True one TokenLogprob per completion token."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # The row's id for submit_feedback ("" for the base model or with ids off on the server).
    prediction_id: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class SampleGeneration:
    """A validation prompt, its reference completion and what the trained adapter wrote."""

    prompt: str
    reference: str
    generated: str


def generation_from_pb(pb: inference_pb2.Prediction | inference_pb2.Generation) -> Generation:
    prediction_id = ""
    if isinstance(pb, inference_pb2.Prediction):
        kind = pb.WhichOneof("output")
        if kind != "generation":
            raise ValueError(f"expected a generation, got {kind!r} (is this a causal-LM server?)")
        prediction_id = pb.prediction_id
        pb = pb.generation
    return Generation(
        text=pb.text,
        finish_reason=FINISH_REASONS.get(pb.finish_reason, "unspecified"),
        prompt_tokens=pb.prompt_tokens,
        completion_tokens=pb.completion_tokens,
        prediction_id=prediction_id,
        logprobs=tuple(token_logprob_from_pb(lp) for lp in pb.logprobs),
    )


class GenerationStream:
    """Iterate for text deltas; then `final` is the whole Generation. The adapter that serves
    the stream is in `adapter_name` / `adapter_version` once the first message arrived. With
    logprobs=True, `logprobs` grows as tokens arrive and `final.logprobs` holds them all."""

    def __init__(self, call) -> None:
        self._call = call
        self.final: Generation | None = None
        self.adapter_name = ""
        self.adapter_version = 0
        self.logprobs: list[TokenLogprob] = []

    def __iter__(self):
        import grpc

        from tuneserve_client.errors import from_rpc_error

        first = True
        try:
            for message in self._call:
                if first:
                    self.adapter_name, self.adapter_version = message.adapter_name, message.adapter_version
                    first = False
                self.logprobs.extend(token_logprob_from_pb(lp) for lp in message.logprobs)
                if message.delta:
                    yield message.delta
                if message.HasField("final"):
                    final = generation_from_pb(message.final)
                    self.final = replace(
                        final, logprobs=tuple(self.logprobs), prediction_id=message.prediction_id
                    )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def text(self) -> str:
        """Consume the stream; the whole text."""
        return "".join(self)

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.final is None:
            self.cancel()


# --- server info -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on one request (past one: InvalidArgument naming the field). Token bounds
    follow from the base model; the max_new_tokens pair is 0 on a classification server."""

    max_predict_inputs: int
    max_text_chars: int
    max_train_examples: int
    max_lora_rank: int
    max_dataset_bytes: int
    max_request_bytes: int
    max_sequence_tokens: int
    max_input_tokens: int
    max_new_tokens_default: int
    max_new_tokens_limit: int
    max_top_logprobs: int = 0


@dataclass(frozen=True)
class TenantQuotas:
    """Per-tenant quotas (0: unlimited); past one: ResourceExhausted naming it."""

    active_jobs: int
    adapter_versions: int
    dataset_bytes: int
    upload_bytes: int
    pinned_adapters: int
    queued_predict_rows: int


@dataclass(frozen=True)
class ServerInfo:
    """What `Client.server_info()` says about the server: `task` is "classification" or
    "causal_lm"; `auth_mode` "api_key" or "none" (`auth_jwt`, `auth_client_certificates`:
    the other credentials it accepts); `features` the names of the optional features on
    (e.g. "prediction_sets", "uncertainty", "streaming_generation")."""

    base_model: str
    task: str
    version: str
    limits: ServerLimits
    quotas: TenantQuotas
    auth_mode: str
    auth_jwt: bool = False
    auth_client_certificates: bool = False
    reflection_requires_auth: bool = False
    features: tuple[str, ...] = ()


def server_info_from_pb(pb: server_info_pb2.GetServerInfoResponse) -> ServerInfo:
    def fields_of(cls: type, msg: object) -> dict[str, int]:
        return {f.name: getattr(msg, f.name) for f in dataclass_fields(cls)}

    return ServerInfo(
        base_model=pb.base_model,
        task=task_from_pb(pb.task),
        version=pb.version,
        limits=ServerLimits(**fields_of(ServerLimits, pb.limits)),
        quotas=TenantQuotas(**fields_of(TenantQuotas, pb.quotas)),
        auth_mode=enum_name(server_info_pb2.AuthMode, pb.auth.mode, "AUTH_MODE_").lower(),
        auth_jwt=pb.auth.jwt,
        auth_client_certificates=pb.auth.client_certificates,
        reflection_requires_auth=pb.auth.reflection_requires_auth,
        features=tuple(f.name for f in pb.features.DESCRIPTOR.fields if getattr(pb.features, f.name)),
    )
