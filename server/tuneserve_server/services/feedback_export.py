"""ExportFeedback: an adapter's feedback as training data, in one call.

LABELS (classification) writes {"text", "label"} rows: the corrected label, or the served
one where the caller said "correct". COMPLETIONS (causal LM) writes {"prompt",
"completion"} rows from corrected generations. Both are stored as a dataset exactly as
UploadDataset stores a JSONL file (the same parser and data report), so `Train(dataset_id=)`
takes it as it is. The report gains one check the upload path cannot make: feedback labels
that differ from the label the served version was trained with for the same normalised
text (issue "feedback_conflicts_training", a WARNING: that is where label noise shows).

PREFERENCE_PAIRS writes {"prompt", "chosen", "rejected"} (chosen = the corrected text,
rejected = the served text) and returns the JSONL in the response: the layout a
preference-tuning recipe reads.

Feedback without an input (neither stored nor given) cannot become a row and is counted as
skipped. The file is bounded by max_dataset_bytes and counts against the dataset_bytes
quota like an upload."""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import dataclass, field, replace

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.feedback import FeedbackRecord
from tuneserve_server.domain.jobs import OptimizerSettings, TaskType
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import DatasetRecord
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.services.quotas import check_upload
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.data_report import DataIssue, DataReport, Severity, StreamingReport, normalise
from tuneserve_server.training.datafile import scan_dataset

MAX_CONFLICTS_LISTED = 20
MAX_ISSUE_ROWS = 5


class ExportKind(str, enum.Enum):
    AUTO = "auto"
    LABELS = "labels"
    COMPLETIONS = "completions"
    PREFERENCE_PAIRS = "preference_pairs"


@dataclass(frozen=True)
class Conflict:
    text: str
    feedback_label: str
    training_label: str
    adapter_version: int


@dataclass(frozen=True)
class ExportResult:
    dataset: DatasetRecord | None
    jsonl: bytes
    rows: int
    skipped: int
    conflicts_with_training: int = 0
    conflicts: list[Conflict] = field(default_factory=list)


def _line(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


class FeedbackExporter:
    def __init__(
        self,
        store: JobStore,
        engine: InferenceEngine,
        *,
        max_text_chars: int,
        max_dataset_bytes: int,
        quotas: Quotas,
    ) -> None:
        self.store = store
        self.engine = engine
        self.max_text_chars = max_text_chars
        self.max_dataset_bytes = max_dataset_bytes
        self.quotas = quotas

    def export(self, ref: AdapterRef, kind: ExportKind, display_name: str) -> ExportResult:
        """Blocking (store reads, the data report): the servicer runs it in a thread."""
        versions = self.store.adapter_versions(ref.namespace, ref.name, include_deleted=True)
        if not versions:
            raise NotFound(f"adapter {ref.name!r} not found in namespace {ref.namespace!r}")
        if ref.version is not None and ref.version not in {v.version for v in versions}:
            raise NotFound(f"adapter {ref} not found")
        task = versions[-1].task
        if kind is ExportKind.AUTO:
            kind = ExportKind.LABELS if task is TaskType.CLASSIFICATION else ExportKind.COMPLETIONS
        wants = TaskType.CLASSIFICATION if kind is ExportKind.LABELS else TaskType.CAUSAL_LM
        if wants is not task:
            raise InvalidRequest.field(
                "kind", f"{kind.value} rows come from {wants.value} adapters; {ref.name} is {task.value}"
            )
        if len(display_name) > 200:
            raise InvalidRequest.field("display_name", "longer than 200 characters")
        feedback = self.store.feedback_of(ref.namespace, ref.name, ref.version)
        if kind is ExportKind.LABELS:
            rows = [
                ({"text": f.input_text, "label": f.label}, f) for f in feedback if f.label and f.input_text
            ]
        elif kind is ExportKind.COMPLETIONS:
            rows = [
                ({"prompt": f.input_text, "completion": f.corrected_text}, f)
                for f in feedback
                if f.corrected_text and f.input_text
            ]
        else:
            rows = [
                ({"prompt": f.input_text, "chosen": f.corrected_text, "rejected": f.served_text}, f)
                for f in feedback
                if f.corrected_text and f.input_text and f.served_text and f.corrected_text != f.served_text
            ]
        skipped = len(feedback) - len(rows)
        if not rows:
            raise FailedPrecondition(
                f"adapter {ref} has no feedback that makes a {kind.value} row "
                f"({len(feedback)} feedback rows, none with "
                + (
                    "a label and an input"
                    if kind is ExportKind.LABELS
                    else "a corrected text, an input and the served text"
                )
                + ")"
            )
        content = b"".join(_line(r) for r, _ in rows)
        if len(content) > self.max_dataset_bytes:
            raise FailedPrecondition(
                f"the export would be {len(content)} bytes, past the server's max_dataset_bytes "
                f"({self.max_dataset_bytes}); export one version at a time (name@version)"
            )
        if kind is ExportKind.PREFERENCE_PAIRS:
            return ExportResult(None, content, len(rows), skipped)
        conflicts: list[Conflict] = []
        if kind is ExportKind.LABELS:
            conflicts = self._conflicts(ref.namespace, versions, [f for _, f in rows])
        usage = self.store.namespace_usage(ref.namespace)
        check_upload(self.quotas, usage, ref.namespace, declared=len(content), adding=0)
        report = self._report(wants, content, [r for r, _ in rows])
        if conflicts:
            report = replace(
                report, issues=(*report.issues, _conflict_issue(conflicts, [f for _, f in rows]))
            )
        dataset, _ = self.store.finish_upload(
            DatasetRecord(
                id="ds-" + uuid.uuid4().hex[:20],
                namespace=ref.namespace,
                display_name=display_name or f"feedback {ref}",
                task=wants,
                format="jsonl",
                size_bytes=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                rows=report.total_rows,
                usable_rows=report.usable_rows,
                report=report.to_dict(),
                text_field="",
                label_field="",
                upload_id="feedback-" + uuid.uuid4().hex,
            ),
            content,
        )
        return ExportResult(
            dataset, b"", len(rows), skipped, len(conflicts), conflicts[:MAX_CONFLICTS_LISTED]
        )

    def _report(self, task: TaskType, content: bytes, rows: list[dict[str, str]]) -> DataReport:
        """The report UploadDataset would give the same file."""
        limits = self.engine.train_limits()
        stream = StreamingReport(
            task, token_lengths=limits.count_tokens, max_seq_length=OptimizerSettings().max_seq_length
        )
        total = scan_dataset(
            [content], "jsonl", task, stream, max_text_chars=self.max_text_chars, field="feedback"
        )

        def text_of_row(row: int) -> str:
            item = rows[row - 1] if 0 < row <= len(rows) else {}
            return item.get("text", item.get("prompt", ""))

        return stream.finish(total, text_of_row)

    def _conflicts(self, namespace: str, versions: list, feedback: list[FeedbackRecord]) -> list[Conflict]:
        """Feedback labels that differ from the serving version's training label for the same
        normalised text (a text trained with several labels conflicts unless the feedback
        label is one of them)."""
        jobs = {v.version: v.job_id for v in versions}
        trained: dict[int, dict[str, set[str]]] = {}
        out = []
        for f in feedback:
            if f.adapter_version not in trained:
                labels_of: dict[str, set[str]] = {}
                job_id = jobs.get(f.adapter_version, "")
                for text, label in self.store.job_training_rows(namespace, job_id) if job_id else ():
                    labels_of.setdefault(normalise(text), set()).add(label)
                trained[f.adapter_version] = labels_of
            before = trained[f.adapter_version].get(normalise(f.input_text))
            if before and f.label not in before:
                out.append(Conflict(f.input_text, f.label, ", ".join(sorted(before)), f.adapter_version))
        return out


def _conflict_issue(conflicts: list[Conflict], feedback: list[FeedbackRecord]) -> DataIssue:
    row_of = {(f.input_text, f.label): i + 1 for i, f in enumerate(feedback)}
    first = conflicts[0]
    n = len(conflicts)
    quoted = first.text if len(first.text) <= 60 else first.text[:57] + "..."
    return DataIssue(
        Severity.WARNING,
        "feedback_conflicts_training",
        f"{n} feedback {'row gives' if n == 1 else 'rows give'} a text a different label than the "
        f"adapter was trained with, e.g. {quoted!r}: feedback {first.feedback_label!r}, training "
        f"{first.training_label!r} (version {first.adapter_version}); check which is right before "
        "training on both",
        tuple(sorted(row_of[(c.text, c.feedback_label)] for c in conflicts)[:MAX_ISSUE_ROWS]),
    )
