"""Evaluations from the client: create (adapter versions, and the bare base model for a causal
LM, on inline examples or an uploaded dataset), get, list, cancel, watch and wait; the results
as plain dataclasses. `Client` has these methods (EvaluationsMixin)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc

from tuneserve.v1 import evaluations_pb2
from tuneserve_client._pb import time_of
from tuneserve_client.errors import Unavailable, from_rpc_error
from tuneserve_client.reports import JobEvent, job_event_from_pb
from tuneserve_client.types import SampleGeneration, state_from_pb, state_to_pb, task_from_pb

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


@dataclass(frozen=True)
class LabelScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    accuracy: float
    confidence: float


@dataclass(frozen=True)
class TargetResult:
    """One evaluated version ("name@3") or the base model ("base")."""

    target: str
    metrics: dict[str, float]
    per_label: tuple[LabelScore, ...] = ()
    labels: tuple[str, ...] = ()  # the confusion matrix's row / column order
    confusion: tuple[tuple[int, ...], ...] = ()  # confusion[i][j]: gold labels[i], predicted labels[j]
    reliability: tuple[ReliabilityBin, ...] = ()
    samples: tuple[SampleGeneration, ...] = ()


@dataclass(frozen=True)
class McNemar:
    metric: str
    a: float
    b: float
    difference: float
    only_a_correct: int
    only_b_correct: int
    statistic: float
    p_value: float
    method: str


@dataclass(frozen=True)
class BootstrapInterval:
    metric: str
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    resamples: int
    seed: int


@dataclass(frozen=True)
class Comparison:
    """B against A on the same rows (differences are B - A)."""

    a: str
    b: str
    rows: int
    mcnemar: McNemar
    bootstrap: tuple[BootstrapInterval, ...]


@dataclass(frozen=True)
class Evaluation:
    id: str
    namespace: str
    task: str
    state: str
    targets: tuple[str, ...]
    requested: tuple[str, ...]
    rows: int
    request_id: str = ""
    dataset_id: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    step: int = 0
    total_steps: int = 0
    rows_per_second_now: float | None = None
    error: str = ""
    attempts: int = 0
    bootstrap_resamples: int = 0
    seed: int = 0
    results: tuple[TargetResult, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    seconds: float = 0.0
    rows_per_second: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def result(self, target: str) -> TargetResult:
        for r in self.results:
            if r.target == target:
                return r
        raise KeyError(target)

    def comparison(self, a: str, b: str) -> Comparison:
        for c in self.comparisons:
            if (c.a, c.b) == (a, b):
                return c
        raise KeyError((a, b))


def evaluation_from_pb(pb: evaluations_pb2.Evaluation) -> Evaluation:
    p = pb.progress
    results = []
    for r in pb.results:
        labels = tuple(r.confusion.labels)
        n = len(labels)
        counts = list(r.confusion.counts)
        results.append(
            TargetResult(
                target=r.target,
                metrics=dict(r.metrics),
                per_label=tuple(
                    LabelScore(x.label, x.precision, x.recall, x.f1, x.support) for x in r.per_label
                ),
                labels=labels,
                confusion=tuple(tuple(counts[i * n : (i + 1) * n]) for i in range(n)),
                reliability=tuple(
                    ReliabilityBin(b.lower, b.upper, b.count, b.accuracy, b.confidence) for b in r.reliability
                ),
                samples=tuple(SampleGeneration(s.prompt, s.reference, s.generated) for s in r.samples),
            )
        )
    comparisons = tuple(
        Comparison(
            a=c.a,
            b=c.b,
            rows=c.rows,
            mcnemar=McNemar(
                c.mcnemar.metric,
                c.mcnemar.a,
                c.mcnemar.b,
                c.mcnemar.difference,
                c.mcnemar.only_a_correct,
                c.mcnemar.only_b_correct,
                c.mcnemar.statistic,
                c.mcnemar.p_value,
                c.mcnemar.method,
            ),
            bootstrap=tuple(
                BootstrapInterval(
                    b.metric,
                    b.a,
                    b.b,
                    b.difference,
                    b.ci_low,
                    b.ci_high,
                    b.confidence,
                    b.p_value,
                    b.resamples,
                    b.seed,
                )
                for b in c.bootstrap
            ),
        )
        for c in pb.comparisons
    )
    return Evaluation(
        id=pb.id,
        namespace=pb.namespace,
        task=task_from_pb(pb.task),
        state=state_from_pb(pb.state),
        targets=tuple(pb.targets),
        requested=tuple(pb.requested),
        rows=pb.rows,
        request_id=pb.request_id,
        dataset_id=pb.dataset_id,
        created_at=time_of(pb, "created_at"),
        started_at=time_of(pb, "started_at"),
        finished_at=time_of(pb, "finished_at"),
        step=p.step,
        total_steps=p.total_steps,
        rows_per_second_now=p.examples_per_second if p.HasField("examples_per_second") else None,
        error=pb.error,
        attempts=pb.attempts,
        bootstrap_resamples=pb.bootstrap_resamples,
        seed=pb.seed,
        results=tuple(results),
        comparisons=comparisons,
        seconds=pb.seconds,
        rows_per_second=pb.rows_per_second,
    )


class EvaluationsMixin:
    """Client methods of EvaluationService (the Client supplies the channel and plumbing)."""

    namespace: str
    retry_backoff: tuple[float, ...]
    _evaluations: Any
    _metadata: tuple[tuple[str, str], ...]
    _call: Callable[..., Any]
    _pages: Callable[..., Any]
    _retrying: Callable[..., Any]

    def create_evaluation(
        self,
        versions: Iterable[str] = (),
        examples: Iterable[Any] = (),
        *,
        dataset: Any = None,
        include_base: bool = False,
        bootstrap_resamples: int | None = None,
        seed: int | None = None,
        sample_generations: int | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Evaluation:
        """Queue an evaluation of `versions` ("name" = the version served now, "name@3", ...)
        and, with `include_base`, the bare base model (causal LM only) on `examples` ((text,
        label) pairs / {"prompt", "completion"} dicts, as for train) or an uploaded `dataset`.
        Every pair of targets is compared (McNemar + paired bootstrap with `seed`,
        `bootstrap_resamples`). Retried with the same request_id when UNAVAILABLE."""
        from tuneserve_client.client import _dataset_id, _examples_pb

        request = evaluations_pb2.CreateEvaluationRequest(
            namespace=self.namespace,
            versions=list(versions),
            include_base=include_base,
            examples=_examples_pb(examples, "examples"),
            dataset_id=_dataset_id(dataset),
            request_id=request_id or uuid.uuid4().hex,
        )
        if bootstrap_resamples is not None:
            request.bootstrap_resamples = bootstrap_resamples
        if seed is not None:
            request.seed = seed
        if sample_generations is not None:
            request.sample_generations = sample_generations
        response = self._retrying(
            lambda t: self._call(self._evaluations.CreateEvaluation, request, t), timeout
        )
        return evaluation_from_pb(response.evaluation)

    def get_evaluation(self, evaluation_id: str, *, timeout: float | None = None) -> Evaluation:
        request = evaluations_pb2.GetEvaluationRequest(namespace=self.namespace, evaluation_id=evaluation_id)
        return evaluation_from_pb(self._call(self._evaluations.GetEvaluation, request, timeout).evaluation)

    def list_evaluations(
        self,
        *,
        states: Iterable[str] | str | None = None,
        adapter: str | None = None,
        page_size: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Evaluation]:
        """Evaluations, newest first (metrics and comparisons; get_evaluation has the
        per-label tables, confusion matrices and reliability bins)."""
        if isinstance(states, str):
            states = [states]
        request = evaluations_pb2.ListEvaluationsRequest(
            namespace=self.namespace,
            states=[state_to_pb(s) for s in states or ()],
            adapter_name=adapter or "",
            page_size=page_size or 0,
        )
        return self._pages(
            self._evaluations.ListEvaluations, request, "evaluations", evaluation_from_pb, timeout
        )

    def cancel_evaluation(self, evaluation_id: str, *, timeout: float | None = None) -> Evaluation:
        request = evaluations_pb2.CancelEvaluationRequest(
            namespace=self.namespace, evaluation_id=evaluation_id
        )
        return evaluation_from_pb(self._call(self._evaluations.CancelEvaluation, request, timeout).evaluation)

    def watch_evaluation(
        self, evaluation_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> Iterator[JobEvent]:
        """The evaluation's events (state, progress) after `after_sequence`, then live ones
        until it ends; reopened from the last event after UNAVAILABLE."""
        after = after_sequence
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = iter(self.retry_backoff * 4)
        while True:
            request = evaluations_pb2.WatchEvaluationRequest(
                namespace=self.namespace, evaluation_id=evaluation_id, after_sequence=after
            )
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            call = self._evaluations.WatchEvaluation(request, timeout=left, metadata=self._metadata or None)
            try:
                for response in call:
                    event = job_event_from_pb(response.event)
                    after = event.sequence
                    backoff = iter(self.retry_backoff * 4)
                    yield event
                return
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                pause = next(backoff, None) if isinstance(error, Unavailable) else None
                if pause is None or (deadline is not None and deadline - time.monotonic() <= pause):
                    raise error from err
                time.sleep(pause)
            finally:
                call.cancel()

    def wait_evaluation(
        self,
        evaluation_or_id: Evaluation | str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_update: Callable[[Evaluation], None] | None = None,
    ) -> Evaluation:
        """Poll until SUCCEEDED, FAILED or CANCELLED and return it (TimeoutError first when
        `timeout` passes). `on_update` sees each change of state or progress."""
        evaluation_id = evaluation_or_id.id if isinstance(evaluation_or_id, Evaluation) else evaluation_or_id
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, int] | None = None
        while True:
            ev = self.get_evaluation(evaluation_id)
            if (ev.state, ev.step) != seen:
                seen = (ev.state, ev.step)
                if on_update is not None:
                    on_update(ev)
            if ev.done:
                return ev
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"evaluation {evaluation_id} still {ev.state} after {timeout:g}s")
            time.sleep(poll_interval)
