"""Evaluations: check the request, pin the versions it names, load its rows and queue it for
the trainer workers (the torch work never runs here, on a serving replica); read, list,
cancel and watch evaluations.

Version names resolve through the engine's `resolve`, the same call Predict makes, so
whatever Predict accepts as a name ("intents", "intents@3", and aliases where the registry
has them) names the same version here. The resolved versions are stored: an evaluation of
"intents" measures the version served at creation, whatever is published afterwards."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import structlog

from tuneserve_server.domain.errors import InvalidRequest, NotFound, Violations
from tuneserve_server.domain.evaluations import BASE_TARGET, Evaluation, EvaluationSpec
from tuneserve_server.domain.jobs import CausalExample, Example, JobEvent, JobState, LabelledText, TaskType
from tuneserve_server.domain.naming import AdapterRef, namespace_of
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.audit import audit
from tuneserve_server.services.datasets import load_rows
from tuneserve_server.services.quotas import check_evaluation, quotas_of
from tuneserve_server.services.readiness import require_ready
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.eval_stats import DEFAULT_RESAMPLES, DEFAULT_SEED, MAX_RESAMPLES

log = structlog.get_logger("tuneserve.services")

WATCH_PAGE = 500
MAX_SAMPLE_GENERATIONS = 20
_ROLES = ("system", "user", "assistant")

# An example as the servicer hands it over: (text, label), a CausalExample, or None.
InlineRow = tuple[str, str] | CausalExample | None


@dataclass(frozen=True)
class EvaluationLimits:
    max_rows: int
    max_targets: int
    max_text_chars: int


@dataclass
class EvaluationInput:
    """CreateEvaluation as plain values."""

    namespace: str
    request_id: str
    versions: Sequence[str]
    include_base: bool = False
    examples: Sequence[InlineRow] = ()
    dataset_id: str = ""
    resamples: int | None = None
    seed: int | None = None
    sample_generations: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _inline_rows(rows: Sequence[InlineRow], task: TaskType, max_chars: int, v: Violations) -> list[Example]:
    out: list[Example] = []
    for i, row in enumerate(rows):
        path = f"examples[{i}]"
        if len(v.items) >= 20:
            break
        if task is TaskType.CLASSIFICATION:
            if not isinstance(row, tuple):
                v.add(path, "must be a classification example (text and label)")
                continue
            text, label = row
            if not text.strip():
                v.add(f"{path}.classification.text", "must not be empty")
            elif len(text) > max_chars:
                v.add(f"{path}.classification.text", f"longer than {max_chars} characters")
            elif not label.strip():
                v.add(f"{path}.classification.label", "must not be empty")
            else:
                out.append(LabelledText(text, label.strip()))
            continue
        if not isinstance(row, CausalExample):
            v.add(path, "must be a causal_lm example (prompt and completion, or messages)")
            continue
        texts = [t.content for t in row.messages] if row.messages else [row.prompt, row.completion]
        if row.messages and (row.prompt or row.completion):
            v.add(f"{path}.causal_lm", "give prompt and completion, or messages, not both")
        elif row.messages and (
            row.messages[-1].role != "assistant" or any(t.role not in _ROLES for t in row.messages)
        ):
            v.add(f"{path}.causal_lm.messages", "roles must be system/user/assistant, ending with assistant")
        elif any(not t.strip() for t in texts):
            v.add(f"{path}.causal_lm", "prompt, completion and every message must not be empty")
        elif any(len(t) > max_chars for t in texts):
            v.add(f"{path}.causal_lm", f"a text is longer than {max_chars} characters")
        else:
            out.append(row)
    return out


class EvaluationService:
    def __init__(
        self,
        store: JobStore,
        engine: InferenceEngine,
        limits: EvaluationLimits,
        *,
        quotas: Quotas | None = None,
        watch_poll_s: float = 0.25,
    ) -> None:
        self.store = store
        self.engine = engine
        self.limits = limits
        self.quotas = quotas if quotas is not None else quotas_of(engine.settings)
        self.watch_poll_s = watch_poll_s

    async def _targets(
        self, namespace: str, req: EvaluationInput, task: TaskType, v: Violations
    ) -> list[str]:
        targets: list[str] = []
        for i, text in enumerate(req.versions):
            where = f"versions[{i}]"
            try:
                record = await self.engine.resolve(AdapterRef.parse(namespace, text, field=where))
            except InvalidRequest as exc:
                v.items.extend(exc.violations)
                continue
            except NotFound as exc:
                v.add(where, exc.message)
                continue
            name = f"{record.name}@{record.version}"
            if record.task is not task:
                v.add(where, f"{name} is a {record.task.value} adapter; this server serves {task.value}")
            elif name in targets:
                v.add(where, f"names {name} again")
            else:
                targets.append(name)
        if req.include_base:
            if task is TaskType.CLASSIFICATION:
                v.add("include_base", "a classification base model has no trained head to evaluate")
            else:
                targets.append(BASE_TARGET)
        if not req.versions and not req.include_base:
            v.add("versions", "name at least one adapter version (or include_base for a causal LM)")
        elif len(targets) > self.limits.max_targets:
            v.add("versions", f"at most {self.limits.max_targets} targets per evaluation (base included)")
        return targets

    def _rows(self, namespace: str, req: EvaluationInput, task: TaskType, v: Violations) -> list[Example]:
        """The rows to evaluate on (blocking: may read a stored dataset)."""
        if req.examples and req.dataset_id:
            v.add("dataset_id", "give examples or dataset_id, not both")
            return []
        if req.dataset_id:
            parsed = load_rows(
                self.store,
                namespace,
                req.dataset_id,
                task=task,
                max_text_chars=self.limits.max_text_chars,
                field="dataset_id",
            )
            rows = [ex for _, ex in parsed.examples]
            where = "dataset_id"
            if not rows:
                v.add(where, f"dataset {req.dataset_id} holds no usable {task.value} rows")
        else:
            where = "examples"
            if not req.examples:
                v.add(where, "give examples or a dataset_id to evaluate on")
                return []
            if len(req.examples) > self.limits.max_rows:
                v.add(where, f"more than {self.limits.max_rows} rows (max_evaluation_rows)")
                return []
            rows = _inline_rows(req.examples, task, self.limits.max_text_chars, v)
        if len(rows) > self.limits.max_rows:
            v.add(where, f"{len(rows)} rows, more than {self.limits.max_rows} (max_evaluation_rows)")
        return rows

    async def create(self, req: EvaluationInput) -> tuple[Evaluation, bool]:
        """Check, pin the versions, load the rows, queue (idempotent on the request id)."""
        require_ready(self.engine)
        namespace = namespace_of(req.namespace)
        v = Violations()
        if not req.request_id:
            v.add("request_id", "required (an idempotency key, for example a UUID)")
        resamples = req.resamples or DEFAULT_RESAMPLES
        if not 1 <= resamples <= MAX_RESAMPLES:
            v.add("bootstrap_resamples", f"must be 1..{MAX_RESAMPLES}")
        samples = 3 if req.sample_generations is None else req.sample_generations
        if samples > MAX_SAMPLE_GENERATIONS:
            v.add("sample_generations", f"at most {MAX_SAMPLE_GENERATIONS}")
        task = self.engine.task
        targets = await self._targets(namespace, req, task, v)
        rows = await asyncio.to_thread(self._rows, namespace, req, task, v)
        v.raise_if_any("invalid evaluation request")
        usage = await asyncio.to_thread(self.store.namespace_usage, namespace)
        check_evaluation(self.quotas, usage, namespace)
        spec = EvaluationSpec(
            namespace=namespace,
            request_id=req.request_id,
            task=task,
            targets=tuple(targets),
            requested=tuple(req.versions) + ((BASE_TARGET,) if req.include_base else ()),
            rows=tuple(rows),
            dataset_id=req.dataset_id,
            resamples=resamples,
            seed=DEFAULT_SEED if req.seed is None else req.seed,
            sample_generations=samples,
        )
        evaluation, created = await asyncio.to_thread(self.store.create_evaluation, spec)
        if created:
            audit(
                "evaluation.create",
                namespace=namespace,
                evaluation_id=evaluation.id,
                targets=",".join(evaluation.targets),
            )
            log.info("evaluation queued", evaluation_id=evaluation.id, rows=len(rows), targets=targets)
        return evaluation, created

    async def get(self, namespace: str, evaluation_id: str) -> Evaluation:
        return await asyncio.to_thread(self.store.get_evaluation, namespace_of(namespace), evaluation_id)

    async def list(
        self, namespace: str, *, states: list[JobState], adapter_name: str, page_size: int, page_token: str
    ) -> tuple[list[Evaluation], str]:
        return await asyncio.to_thread(
            functools.partial(
                self.store.list_evaluations,
                namespace_of(namespace),
                states=states,
                adapter_name=adapter_name,
                page_size=page_size,
                page_token=page_token,
            )
        )

    async def cancel(self, namespace: str, evaluation_id: str) -> Evaluation:
        namespace = namespace_of(namespace)
        evaluation = await asyncio.to_thread(self.store.cancel_evaluation, namespace, evaluation_id)
        audit("evaluation.cancel", namespace=namespace, evaluation_id=evaluation_id)
        return evaluation

    async def watch(self, namespace: str, evaluation_id: str, after_sequence: int) -> AsyncIterator[JobEvent]:
        """The evaluation's events after `after_sequence`, then live ones until it has ended
        (as TrainingService.watch does for a job)."""
        namespace = namespace_of(namespace)
        await self.get(namespace, evaluation_id)  # NotFound for a job id or another tenant's
        after, ended = after_sequence, False
        while True:
            events = await asyncio.to_thread(
                self.store.list_events, namespace, evaluation_id, after, WATCH_PAGE
            )
            for event in events:
                yield event
                after = event.sequence
            if len(events) == WATCH_PAGE:
                continue
            if ended:
                return
            evaluation = await self.get(namespace, evaluation_id)
            if evaluation.state.terminal:
                ended = True
                continue
            await asyncio.sleep(self.watch_poll_s)
