"""The data report: what is in a training (and validation) set and what is wrong with it,
computed before any job is queued. Mirrors the proto's DataReport; stored with jobs and
datasets as `to_dict()` JSON.

Checks and their severities (thresholds in `ReportThresholds`):

    no_usable_rows           ERROR    no usable training rows
    rows_dropped             WARNING  rows the parser dropped, by reason
    too_few_labels           ERROR    classification with fewer than 2 training labels
    label_too_rare           ERROR    a training label with < min_examples_per_label rows
    unseen_validation_label  ERROR    a validation label never seen in training
    label_not_validated      WARNING  a training label with no validation rows (too rare to hold out)
    imbalance                WARNING  most / least frequent training label > imbalance_warning_ratio
    duplicates               WARNING  repeated rows (within a split) over duplicate_warning_fraction
    conflicting_labels       WARNING  a normalised text with more than one label;
                             ERROR    when over max_conflict_fraction of the distinct texts
    leakage                  WARNING  any validation row whose normalised text is in training;
                             ERROR    when over max_leakage_fraction of the validation rows
    over_length              WARNING  rows longer than max_seq_length tokens (truncated)
    identical_pair           WARNING  preference pairs whose chosen and rejected replies are the
                             same after normalising (they teach nothing);
                             ERROR    when over max_identical_pair_fraction of the training pairs

"Normalised" means Unicode NFKC, case-folded, punctuation (Unicode category P) removed,
whitespace collapsed. Exact duplicates repeat an earlier row of the same split exactly (classification:
text and label; causal LM: every turn); near duplicates repeat one only after normalising.
Near-duplicate detection is by hashing the normalised text, so it is O(n): it finds rows that
normalise to the same string, not rows that merely look alike (no edit distance, no
embeddings). Conflicts and leakage use the normalised text alone for classification; for
causal LM, leakage uses the whole normalised example (prompt and completion), and there are
no conflicts (several completions for one prompt are normal). Preference pairs: duplicates
repeat prompt, chosen and rejected; leakage is a validation pair whose prompt (normalised)
is a training prompt; token lengths measure the prompt with the longer of the two replies.

Row numbers in issues are the callers' (1-based within their file or list); each message
says which split they belong to."""

from __future__ import annotations

import enum
import hashlib
import unicodedata
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneserve_server.domain.jobs import (
    CausalExample,
    Example,
    LabelledText,
    PreferenceExample,
    TaskType,
)

MAX_EXAMPLE_ROWS = 5  # row numbers an issue or a drop reason carries


class Severity(str, enum.Enum):
    WARNING = "WARNING"  # training can go ahead; look at it
    ERROR = "ERROR"  # training is refused


@dataclass(frozen=True)
class DataIssue:
    severity: Severity
    code: str
    message: str
    rows: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "rows": list(self.rows),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataIssue:
        return cls(
            Severity(data["severity"]),
            data["code"],
            data.get("message", ""),
            tuple(data.get("rows", ())),
        )


@dataclass(frozen=True)
class LabelCount:
    label: str
    train: int = 0
    validation: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "train": self.train, "validation": self.validation}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelCount:
        return cls(data["label"], data.get("train", 0), data.get("validation", 0))


@dataclass(frozen=True)
class DroppedRows:
    reason: str  # empty_text | missing_label | bad_utf8 | bad_row | over_length
    count: int
    rows: tuple[int, ...] = ()  # the first few, ascending

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "count": self.count, "rows": list(self.rows)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DroppedRows:
        return cls(data["reason"], data.get("count", 0), tuple(data.get("rows", ())))


@dataclass(frozen=True)
class DataReport:
    total_rows: int = 0
    usable_rows: int = 0
    train_rows: int = 0
    validation_rows: int = 0
    dropped: tuple[DroppedRows, ...] = ()
    labels: tuple[LabelCount, ...] = ()  # most frequent in training first
    imbalance_ratio: float = 0.0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    conflicting_texts: int = 0
    leaked_validation_rows: int = 0
    truncated_rows: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0
    issues: tuple[DataIssue, ...] = ()  # errors first

    @property
    def ok(self) -> bool:
        """False when any issue is an ERROR."""
        return not self.errors

    @property
    def errors(self) -> list[DataIssue]:
        return [i for i in self.issues if i.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[DataIssue]:
        return [i for i in self.issues if i.severity is Severity.WARNING]

    def error_summary(self) -> str:
        """The ERROR messages in one line (for a rejection's status message); "" if none."""
        return "; ".join(i.message for i in self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_rows": self.total_rows,
            "usable_rows": self.usable_rows,
            "train_rows": self.train_rows,
            "validation_rows": self.validation_rows,
            "dropped": [d.to_dict() for d in self.dropped],
            "labels": [c.to_dict() for c in self.labels],
            "imbalance_ratio": self.imbalance_ratio,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "conflicting_texts": self.conflicting_texts,
            "leaked_validation_rows": self.leaked_validation_rows,
            "truncated_rows": self.truncated_rows,
            "max_tokens": self.max_tokens,
            "mean_tokens": self.mean_tokens,
            "issues": [i.to_dict() for i in self.issues],
            "ok": self.ok,  # derived; from_dict recomputes it from the issues
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataReport:
        """Reads `to_dict()` output; keys it lacks (older rows) take their defaults."""
        return cls(
            total_rows=data.get("total_rows", 0),
            usable_rows=data.get("usable_rows", 0),
            train_rows=data.get("train_rows", 0),
            validation_rows=data.get("validation_rows", 0),
            dropped=tuple(DroppedRows.from_dict(d) for d in data.get("dropped", ())),
            labels=tuple(LabelCount.from_dict(c) for c in data.get("labels", ())),
            imbalance_ratio=float(data.get("imbalance_ratio", 0.0)),
            exact_duplicates=data.get("exact_duplicates", 0),
            near_duplicates=data.get("near_duplicates", 0),
            conflicting_texts=data.get("conflicting_texts", 0),
            leaked_validation_rows=data.get("leaked_validation_rows", 0),
            truncated_rows=data.get("truncated_rows", 0),
            max_tokens=data.get("max_tokens", 0),
            mean_tokens=float(data.get("mean_tokens", 0.0)),
            issues=tuple(DataIssue.from_dict(i) for i in data.get("issues", ())),
        )


@dataclass(frozen=True)
class ReportThresholds:
    """Where a finding becomes a warning or an error.

    min_examples_per_label = 2: a training label with fewer rows is an ERROR (one example
        cannot be learnt from, nor held out for validation).
    max_leakage_fraction = 0.05: any validation row also in training is a WARNING; more than
        5% of the validation rows is an ERROR (the evaluation would overstate quality).
    imbalance_warning_ratio = 10: a WARNING when the most frequent training label has more
        than 10x the rows of the least frequent.
    duplicate_warning_fraction = 0.05: a WARNING when repeated rows (exact + near) are more
        than 5% of the usable rows; 0 warns on any. The counts are reported either way.
    max_conflict_fraction = 0.10: any text with conflicting labels is a WARNING; more than
        10% of the distinct (normalised) texts is an ERROR (the labels are not trustworthy).
    max_identical_pair_fraction = 0.10: any preference pair with the same chosen and rejected
        reply is a WARNING; more than 10% of the training pairs is an ERROR.
    """

    min_examples_per_label: int = 2
    max_leakage_fraction: float = 0.05
    imbalance_warning_ratio: float = 10.0
    duplicate_warning_fraction: float = 0.05
    max_conflict_fraction: float = 0.10
    max_identical_pair_fraction: float = 0.10


Rows = Sequence[tuple[int, Example]]


class _PunctuationTable(dict[int, int | None]):
    """str.translate table deleting Unicode punctuation (categories P*), filled as
    characters are met, so translating stays in C after the first sight of each one."""

    def __missing__(self, codepoint: int) -> int | None:
        value = None if unicodedata.category(chr(codepoint)).startswith("P") else codepoint
        self[codepoint] = value
        return value


_PUNCTUATION = _PunctuationTable()


def normalise(text: str) -> str:
    """Case, width, punctuation and whitespace folded away (symbols such as currency signs
    stay); the text itself, case-folded, where nothing would remain."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(_PUNCTUATION).split()) or " ".join(folded.split())


def render_causal(example: CausalExample | PreferenceExample) -> str:
    """The example's turns as one text, for measuring token length when the caller does not
    pass the recipe's own rendering (a preference pair: its prompt and the longer reply, the
    longest sequence the recipe forms from it)."""
    if isinstance(example, PreferenceExample):
        reply = max(example.chosen, example.rejected, key=len)
        return "\n".join([*(t.content for t in example.prompt_turns()), reply])
    return "\n".join(turn.content for turn in example.conversation())


def _prompt_key(ex: PreferenceExample) -> str:
    return "\x1f".join(f"{t.role}\x1e{normalise(t.content)}" for t in ex.prompt_turns())


def is_identical_pair(ex: PreferenceExample) -> bool:
    """Chosen and rejected are the same reply once normalised."""
    return normalise(ex.chosen) == normalise(ex.rejected)


def build_report(
    task: TaskType,
    train: Rows,
    validation: Rows,
    *,
    total_rows: int,
    dropped: Mapping[str, list[int]],
    token_lengths: Callable[[list[str]], list[int]] | None = None,
    max_seq_length: int | None = None,
    thresholds: ReportThresholds = ReportThresholds(),
    render: Callable[[CausalExample], str] = render_causal,
) -> DataReport:
    """The report on `train` and `validation` ((row number, example) pairs). `total_rows`
    counts every row read, `dropped` maps a drop reason to its row numbers (what the parser
    returned). `token_lengths` measures texts (classification: the text; causal LM: the
    example as `render` writes it); without it the token fields stay 0."""
    b = _Builder(task, sorted(train, key=_row_no), sorted(validation, key=_row_no), thresholds)
    b.dropped(total_rows, dropped)
    if task is TaskType.CLASSIFICATION:
        b.labels()
        b.conflicts()
    if task is TaskType.PREFERENCE:
        b.identical_pairs()
    b.duplicates()
    b.leakage()
    if token_lengths is not None:
        b.token_lengths(token_lengths, max_seq_length, render)
    return b.report(total_rows)


def _row_no(item: tuple[int, Example]) -> int:
    return item[0]


def _first(rows: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(rows)[:MAX_EXAMPLE_ROWS])


def _rows_text(rows: Sequence[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:MAX_EXAMPLE_ROWS])
    more = ", ..." if len(rows) > MAX_EXAMPLE_ROWS else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}"


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0%"


def _exact_key(ex: Example) -> Any:
    if isinstance(ex, LabelledText):
        return (ex.text, ex.label)
    if isinstance(ex, PreferenceExample):
        return (tuple((t.role, t.content) for t in ex.prompt_turns()), ex.chosen, ex.rejected)
    return tuple((t.role, t.content) for t in ex.conversation())


def _text_key(ex: Example) -> str:
    """Classification: the normalised text; causal LM: the whole normalised example."""
    if isinstance(ex, LabelledText):
        return normalise(ex.text)
    if isinstance(ex, PreferenceExample):
        return _prompt_key(ex)
    return "\x1f".join(f"{t.role}\x1e{normalise(t.content)}" for t in ex.conversation())


def _near_key(ex: Example, text_key: str) -> Any:
    """Same for rows that repeat each other after normalising (classification: with the
    same label; preference pairs: with the same replies)."""
    if isinstance(ex, PreferenceExample):
        return (text_key, normalise(ex.chosen), normalise(ex.rejected))
    return (text_key, ex.label) if isinstance(ex, LabelledText) else text_key


class _Builder:
    def __init__(self, task: TaskType, train: Rows, validation: Rows, t: ReportThresholds) -> None:
        self.task = task
        self.train = train
        self.validation = validation
        self.t = t
        self.issues: list[DataIssue] = []
        self.fields: dict[str, Any] = {}
        # Normalised text per row, computed once: normalising is the costly part.
        self.train_keys = [_text_key(ex) for _, ex in train]
        self.val_keys = [_text_key(ex) for _, ex in validation]

    def _issue(self, severity: Severity, code: str, message: str, rows: Iterable[int]) -> None:
        self.issues.append(DataIssue(severity, code, message, _first(rows)))

    def report(self, total_rows: int) -> DataReport:
        issues = sorted(self.issues, key=lambda i: i.severity is not Severity.ERROR)
        return DataReport(
            total_rows=total_rows,
            usable_rows=len(self.train) + len(self.validation),
            train_rows=len(self.train),
            validation_rows=len(self.validation),
            issues=tuple(issues),
            **self.fields,
        )

    # ------------------------------------------------------------------ drops
    def dropped(self, total_rows: int, dropped: Mapping[str, list[int]]) -> None:
        entries = sorted(
            (DroppedRows(reason, len(rows), _first(rows)) for reason, rows in dropped.items() if rows),
            key=lambda d: (-d.count, d.reason),
        )
        self.fields["dropped"] = tuple(entries)
        n_dropped = sum(d.count for d in entries)
        why = ", ".join(f"{d.count} {d.reason}" for d in entries)
        if not self.train:
            if n_dropped:
                detail = f"all {_plural(total_rows, 'row')} were dropped ({why})"
            elif self.validation:
                detail = "every row is in the validation split"
            else:
                detail = "the data has no rows"
            self._issue(
                Severity.ERROR,
                "no_usable_rows",
                f"no usable training rows: {detail}; fix the rows listed under dropped",
                (r for rows in dropped.values() for r in rows),
            )
        elif n_dropped:
            rows = sorted(r for rows in dropped.values() for r in rows)
            self._issue(
                Severity.WARNING,
                "rows_dropped",
                f"{n_dropped} of {_plural(total_rows, 'row')} were dropped ({why}), first at "
                f"{_rows_text(rows)}; fix them to train on them",
                rows,
            )

    # ------------------------------------------------------------------ labels
    def labels(self) -> None:
        train_counts = Counter(ex.label for _, ex in self.train)
        val_counts = Counter(ex.label for _, ex in self.validation)
        every = set(train_counts) | set(val_counts)
        order = sorted(every, key=lambda lb: (-train_counts[lb], -val_counts[lb], lb))
        self.fields["labels"] = tuple(LabelCount(lb, train_counts[lb], val_counts[lb]) for lb in order)
        if train_counts:
            most, least = max(train_counts.values()), min(train_counts.values())
            ratio = most / least
            self.fields["imbalance_ratio"] = ratio
            if ratio > self.t.imbalance_warning_ratio:
                big = next(lb for lb in order if train_counts[lb] == most)
                small = next(lb for lb in reversed(order) if train_counts[lb] == least)
                self._issue(
                    Severity.WARNING,
                    "imbalance",
                    f"label {_quote(big)} has {most} training examples and {_quote(small)} has "
                    f"{least} (ratio {ratio:.1f}, above {self.t.imbalance_warning_ratio:g}); the "
                    "model will favour the frequent labels: add examples of the rare ones",
                    (),
                )
        if self.train and len(train_counts) < 2:
            only = f" ({_quote(next(iter(train_counts)))})" if train_counts else ""
            self._issue(
                Severity.ERROR,
                "too_few_labels",
                f"the training data has {_plural(len(train_counts), 'distinct label')}{only}; "
                "a classifier needs at least 2",
                (),
            )
        rare = [lb for lb in reversed(order) if 0 < train_counts[lb] < self.t.min_examples_per_label]
        if rare:
            need = self.t.min_examples_per_label
            if len(rare) == 1:
                n = train_counts[rare[0]]
                what = f"label {_quote(rare[0])} has {_plural(n, 'training example')}"
            else:
                shown = ", ".join(f"{_quote(lb)} ({train_counts[lb]})" for lb in rare[:5])
                more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
                what = f"{len(rare)} labels have too few training examples: {shown}{more}"
            rare_set = set(rare)
            self._issue(
                Severity.ERROR,
                "label_too_rare",
                f"{what}; at least {need} are needed per label: add examples or remove the label",
                (r for r, ex in self.train if ex.label in rare_set),
            )
        unseen = sorted(set(val_counts) - set(train_counts))
        if unseen and self.train:  # no training rows at all is no_usable_rows
            unseen_set = set(unseen)
            rows = [r for r, ex in self.validation if ex.label in unseen_set]
            shown = ", ".join(_quote(lb) for lb in unseen[:5])
            more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
            what = (
                f"validation label {shown} never appears"
                if len(unseen) == 1
                else f"{len(unseen)} validation labels ({shown}{more}) never appear"
            )
            self._issue(
                Severity.ERROR,
                "unseen_validation_label",
                f"{what} in training (validation {_rows_text(rows)}); add training examples "
                "or drop those validation rows",
                rows,
            )
        unvalidated = [lb for lb in reversed(order) if train_counts[lb] and not val_counts[lb]]
        if unvalidated and self.validation:
            shown = ", ".join(f"{_quote(lb)} ({train_counts[lb]})" for lb in unvalidated[:5])
            more = f" and {len(unvalidated) - 5} more" if len(unvalidated) > 5 else ""
            what = (
                f"label {shown} has"
                if len(unvalidated) == 1
                else f"{len(unvalidated)} labels ({shown}{more}) have"
            )
            self._issue(
                Severity.WARNING,
                "label_not_validated",
                f"{what} no validation rows (too few examples to hold one out, or none in the "
                "validation set given): the model learns them but the metrics, calibration and "
                "per-label thresholds do not measure them; add examples",
                (),
            )

    def conflicts(self) -> None:
        keyed = [
            *(("training", k, r, ex) for k, (r, ex) in zip(self.train_keys, self.train, strict=True)),
            *(("validation", k, r, ex) for k, (r, ex) in zip(self.val_keys, self.validation, strict=True)),
        ]
        labels_of: dict[str, set[str]] = defaultdict(set)
        for _, key, _, ex in keyed:
            labels_of[key].add(ex.label)  # type: ignore[union-attr]
        conflicting = {k for k, labels in labels_of.items() if len(labels) > 1}
        self.fields["conflicting_texts"] = len(conflicting)
        if not conflicting:
            return
        hits = [(split, key, row, ex) for split, key, row, ex in keyed if key in conflicting]
        _, first_key, _, first_ex = hits[0]
        rows_of = {split: [r for s, _, r, _ in hits if s == split] for split in ("training", "validation")}
        example_where = "; ".join(
            f"{split} {_rows_text([r for s, k, r, _ in hits if s == split and k == first_key])}"
            for split in ("training", "validation")
            if any(s == split and k == first_key for s, k, _, _ in hits)
        )
        fraction = len(conflicting) / len(labels_of)
        too_many = fraction > self.t.max_conflict_fraction
        limit = f", above the {self.t.max_conflict_fraction:.0%} limit" if too_many else ""
        where = "; ".join(f"{s} {_rows_text(rs)}" for s, rs in rows_of.items() if rs)
        verb = "appears" if len(conflicting) == 1 else "appear"
        self._issue(
            Severity.ERROR if too_many else Severity.WARNING,
            "conflicting_labels",
            f"{_plural(len(conflicting), 'text')} ({fraction:.1%} of the distinct texts{limit}) "
            f"{verb} with more than one label, e.g. {_quote(first_ex.text)} as "  # type: ignore[union-attr]
            f"{' and '.join(_quote(lb) for lb in sorted(labels_of[first_key]))} "
            f"({example_where}); all: {where}. Fix the labels or remove the rows",
            rows_of["training"] or rows_of["validation"],
        )

    # ------------------------------------------------------------------ preference pairs
    def identical_pairs(self) -> None:
        splits = (("training", self.train), ("validation", self.validation))
        found = {s: [r for r, ex in rows if is_identical_pair(ex)] for s, rows in splits}  # type: ignore[arg-type]
        _identical_issue(self._issue, found["training"], found["validation"], len(self.train), self.t)

    # ------------------------------------------------------------------ repeats
    def duplicates(self) -> None:
        exact = near = 0
        repeated: list[tuple[str, int, int]] = []  # (split, row, earlier row)
        splits = (("training", self.train, self.train_keys), ("validation", self.validation, self.val_keys))
        for split, rows, text_keys in splits:
            seen_exact: dict[Any, int] = {}
            seen_near: dict[Any, int] = {}
            for (row, ex), text_key in zip(rows, text_keys, strict=True):
                ek, nk = _exact_key(ex), _near_key(ex, text_key)
                if ek in seen_exact:
                    exact += 1
                    repeated.append((split, row, seen_exact[ek]))
                elif nk in seen_near:
                    near += 1
                    repeated.append((split, row, seen_near[nk]))
                seen_exact.setdefault(ek, row)
                seen_near.setdefault(nk, row)
        self.fields["exact_duplicates"] = exact
        self.fields["near_duplicates"] = near
        usable = len(self.train) + len(self.validation)
        if not repeated or (exact + near) / usable <= self.t.duplicate_warning_fraction:
            return
        split, row, earlier = repeated[0]
        self._issue(
            Severity.WARNING,
            "duplicates",
            f"{exact + near} of {usable} rows ({_percent(exact + near, usable)}) repeat an "
            f"earlier row of their split: {exact} exactly, {near} after normalising case, "
            f"whitespace and punctuation (e.g. {split} row {row} repeats row {earlier}); "
            "repeated rows weigh more in training: remove them",
            (r for s, r, _ in repeated if s == split),
        )

    def leakage(self) -> None:
        if not self.validation or not self.train:
            self.fields["leaked_validation_rows"] = 0
            return
        in_train = set(self.train_keys)
        leaked = [r for k, (r, _) in zip(self.val_keys, self.validation, strict=True) if k in in_train]
        self.fields["leaked_validation_rows"] = len(leaked)
        if not leaked:
            return
        n_val = len(self.validation)
        too_many = len(leaked) / n_val > self.t.max_leakage_fraction
        limit = f", above the {self.t.max_leakage_fraction:.0%} limit" if too_many else ""
        what = {TaskType.CLASSIFICATION: "text", TaskType.PREFERENCE: "prompt"}.get(
            self.task, "prompt and completion"
        )
        self._issue(
            Severity.ERROR if too_many else Severity.WARNING,
            "leakage",
            f"{len(leaked)} of {n_val} validation rows ({_percent(len(leaked), n_val)}{limit}) "
            f"are also in training (same {what} after normalising): validation {_rows_text(leaked)}; "
            "evaluation would overstate quality: remove them from one split",
            leaked,
        )

    # ------------------------------------------------------------------ tokens
    def token_lengths(
        self,
        measure: Callable[[list[str]], list[int]],
        max_seq_length: int | None,
        render: Callable[[CausalExample], str],
    ) -> None:
        rows = [*self.train, *self.validation]
        texts = [ex.text if isinstance(ex, LabelledText) else render(ex) for _, ex in rows]
        lengths = list(measure(texts)) if texts else []
        if len(lengths) != len(texts):
            raise ValueError(f"token_lengths returned {len(lengths)} lengths for {len(texts)} texts")
        if not lengths:
            return
        self.fields["max_tokens"] = max(lengths)
        self.fields["mean_tokens"] = sum(lengths) / len(lengths)
        if max_seq_length is None:
            return
        over = [
            (n, r, i < len(self.train))
            for i, (n, (r, _)) in enumerate(zip(lengths, rows, strict=True))
            if n > max_seq_length
        ]
        self.fields["truncated_rows"] = len(over)
        if not over:
            return
        train_over = [r for _, r, is_train in over if is_train]
        val_over = [r for _, r, is_train in over if not is_train]
        where = "; ".join(
            f"{split} {_rows_text(rs)}"
            for split, rs in (("training", train_over), ("validation", val_over))
            if rs
        )
        self._issue(
            Severity.WARNING,
            "over_length",
            f"{len(over)} of {len(rows)} rows are longer than max_seq_length={max_seq_length} "
            f"tokens (the longest has {max(lengths)}) and will be truncated ({where}); raise "
            "max_seq_length or shorten them",
            train_over or val_over,
        )


# ---------------------------------------------------------------------- as a stream
def _digest(*parts: str) -> int:
    """64 bits of BLAKE2b over the parts, 0xFF-separated (a byte UTF-8 never holds). What
    the stream keeps per row instead of the text: two rows that differ collide with odds
    of about n^2 / 2^65 (1e-8 for a million rows)."""
    data = b"\xff".join(p.encode("utf-8", "surrogatepass") for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class StreamingReport:
    """`build_report(task, rows, [], ...)` for a file read once, row by row (an upload):
    it keeps a few fixed-size numbers per row (row number, label id, three 64-bit digests,
    token length) in arrays, never the rows, and measures tokens in batches. The report is
    the one `build_report` gives on the same rows (a test checks it). A text it must quote
    (the first conflicting one) comes from `text_of_row`, which reads that row again."""

    TOKEN_BATCH = 512

    def __init__(
        self,
        task: TaskType,
        *,
        token_lengths: Callable[[list[str]], list[int]] | None = None,
        max_seq_length: int | None = None,
        thresholds: ReportThresholds = ReportThresholds(),
        render: Callable[[CausalExample], str] = render_causal,
    ) -> None:
        self.task = task
        self.measure = token_lengths
        self.max_seq_length = max_seq_length
        self.t = thresholds
        self.render = render
        self.rows = array("q")
        self.label_ids = array("q")
        self.text_keys = array("q")
        self.exact_keys = array("q")
        self.near_keys = array("q")
        self.tokens = array("q")
        self.labels: dict[str, int] = {}  # label -> id, in first-seen order
        self.label_rows: list[list[int]] = []  # id -> its first MAX_EXAMPLE_ROWS rows
        self.drops: dict[str, list[int]] = {}  # reason -> [count, first rows...]
        self.first_drops: list[int] = []
        self.n_dropped = 0
        self.identical: list[int] = []  # preference pairs with chosen == rejected (normalised)
        self._texts: list[str] = []

    # RowSink: rows arrive in ascending order
    def example(self, row: int, ex: Example) -> None:
        self.rows.append(row)
        text_key = _text_key(ex)
        self.text_keys.append(_digest(text_key))
        if isinstance(ex, LabelledText):
            lid = self.labels.setdefault(ex.label, len(self.labels))
            if lid == len(self.label_rows):
                self.label_rows.append([])
            if len(self.label_rows[lid]) < MAX_EXAMPLE_ROWS:
                self.label_rows[lid].append(row)
            self.label_ids.append(lid)
            self.exact_keys.append(_digest(ex.text, ex.label))
            self.near_keys.append(_digest(text_key, ex.label))
        elif isinstance(ex, PreferenceExample):
            self.label_ids.append(-1)
            turns = [p for t in ex.prompt_turns() for p in (t.role, t.content)]
            self.exact_keys.append(_digest(*turns, "\x00", ex.chosen, ex.rejected))
            self.near_keys.append(_digest(*_near_key(ex, text_key)))
            if is_identical_pair(ex):
                self.identical.append(row)
        else:
            self.label_ids.append(-1)
            self.exact_keys.append(_digest(*(p for t in ex.conversation() for p in (t.role, t.content))))
            self.near_keys.append(self.text_keys[-1])
        if self.measure is not None:
            self._texts.append(ex.text if isinstance(ex, LabelledText) else self.render(ex))
            if len(self._texts) >= self.TOKEN_BATCH:
                self._measure()

    def drop(self, row: int, reason: str) -> None:
        entry = self.drops.setdefault(reason, [0])
        entry[0] += 1
        if len(entry) <= MAX_EXAMPLE_ROWS:
            entry.append(row)
        if len(self.first_drops) < MAX_EXAMPLE_ROWS:
            self.first_drops.append(row)
        self.n_dropped += 1

    def _measure(self) -> None:
        assert self.measure is not None
        lengths = list(self.measure(self._texts)) if self._texts else []
        if len(lengths) != len(self._texts):
            raise ValueError(f"token_lengths returned {len(lengths)} lengths for {len(self._texts)} texts")
        self.tokens.extend(lengths)
        self._texts = []

    def finish(self, total_rows: int, text_of_row: Callable[[int], str]) -> DataReport:
        if self.measure is not None:
            self._measure()
        issues: list[DataIssue] = []
        fields: dict[str, Any] = {}
        n = len(self.rows)
        rows = np.frombuffer(self.rows, dtype=np.int64) if n else np.zeros(0, np.int64)

        def issue(severity: Severity, code: str, message: str, first: Sequence[int]) -> None:
            issues.append(DataIssue(severity, code, message, tuple(int(r) for r in first[:MAX_EXAMPLE_ROWS])))

        # drops
        entries = sorted(
            (DroppedRows(reason, e[0], tuple(e[1:])) for reason, e in self.drops.items()),
            key=lambda d: (-d.count, d.reason),
        )
        fields["dropped"] = tuple(entries)
        why = ", ".join(f"{d.count} {d.reason}" for d in entries)
        if not n:
            detail = (
                f"all {_plural(total_rows, 'row')} were dropped ({why})"
                if self.n_dropped
                else "the data has no rows"
            )
            issue(
                Severity.ERROR,
                "no_usable_rows",
                f"no usable training rows: {detail}; fix the rows listed under dropped",
                self.first_drops,
            )
        elif self.n_dropped:
            issue(
                Severity.WARNING,
                "rows_dropped",
                f"{self.n_dropped} of {_plural(total_rows, 'row')} were dropped ({why}), first at "
                f"{_rows_text_n(self.first_drops, self.n_dropped)}; fix them to train on them",
                self.first_drops,
            )
        labels_arr = np.frombuffer(self.label_ids, dtype=np.int64) if n else np.zeros(0, np.int64)
        if self.task is TaskType.CLASSIFICATION:
            self._labels(labels_arr, issue, fields)
            self._conflicts(rows, labels_arr, issue, fields, text_of_row)
        if self.task is TaskType.PREFERENCE:
            _identical_issue(issue, self.identical, [], n, self.t)
        self._duplicates(rows, issue, fields)
        fields["leaked_validation_rows"] = 0
        if self.measure is not None and len(self.tokens):
            self._token_fields(rows, issue, fields)
        issues.sort(key=lambda i: i.severity is not Severity.ERROR)
        return DataReport(
            total_rows=total_rows,
            usable_rows=n,
            train_rows=n,
            validation_rows=0,
            issues=tuple(issues),
            **fields,
        )

    def _labels(self, labels_arr: Any, issue: Callable[..., None], fields: dict[str, Any]) -> None:
        names = list(self.labels)
        counts = np.bincount(labels_arr, minlength=len(names)) if len(labels_arr) else np.zeros(0, np.int64)
        train_counts = Counter({names[i]: int(c) for i, c in enumerate(counts)})
        order = sorted(train_counts, key=lambda lb: (-train_counts[lb], lb))
        fields["labels"] = tuple(LabelCount(lb, train_counts[lb], 0) for lb in order)
        if train_counts:
            most, least = max(train_counts.values()), min(train_counts.values())
            ratio = most / least
            fields["imbalance_ratio"] = ratio
            if ratio > self.t.imbalance_warning_ratio:
                big = next(lb for lb in order if train_counts[lb] == most)
                small = next(lb for lb in reversed(order) if train_counts[lb] == least)
                issue(
                    Severity.WARNING,
                    "imbalance",
                    f"label {_quote(big)} has {most} training examples and {_quote(small)} has "
                    f"{least} (ratio {ratio:.1f}, above {self.t.imbalance_warning_ratio:g}); the "
                    "model will favour the frequent labels: add examples of the rare ones",
                    (),
                )
        if len(labels_arr) and len(train_counts) < 2:
            only = f" ({_quote(next(iter(train_counts)))})" if train_counts else ""
            issue(
                Severity.ERROR,
                "too_few_labels",
                f"the training data has {_plural(len(train_counts), 'distinct label')}{only}; "
                "a classifier needs at least 2",
                (),
            )
        rare = [lb for lb in reversed(order) if 0 < train_counts[lb] < self.t.min_examples_per_label]
        if rare:
            need = self.t.min_examples_per_label
            if len(rare) == 1:
                what = f"label {_quote(rare[0])} has {_plural(train_counts[rare[0]], 'training example')}"
            else:
                shown = ", ".join(f"{_quote(lb)} ({train_counts[lb]})" for lb in rare[:5])
                more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
                what = f"{len(rare)} labels have too few training examples: {shown}{more}"
            first = sorted(r for lb in rare for r in self.label_rows[self.labels[lb]])
            issue(
                Severity.ERROR,
                "label_too_rare",
                f"{what}; at least {need} are needed per label: add examples or remove the label",
                first,
            )

    def _conflicts(
        self,
        rows: Any,
        labels_arr: Any,
        issue: Callable[..., None],
        fields: dict[str, Any],
        text_of_row: Callable[[int], str],
    ) -> None:
        keys = np.frombuffer(self.text_keys, dtype=np.int64) if len(rows) else np.zeros(0, np.int64)
        distinct = np.unique(keys)
        pairs = np.unique(np.stack([keys, labels_arr], axis=1), axis=0) if len(keys) else np.zeros((0, 2))
        pair_keys, per_key = np.unique(pairs[:, 0], return_counts=True)
        conflicting = pair_keys[per_key > 1]
        fields["conflicting_texts"] = len(conflicting)
        if not len(conflicting):
            return
        hit = np.isin(keys, conflicting)
        hit_rows = rows[hit]
        first_i = int(np.argmax(hit))
        first_key = keys[first_i]
        first_rows = rows[keys == first_key]
        names = list(self.labels)
        first_labels = sorted({names[int(i)] for i in labels_arr[keys == first_key]})
        fraction = len(conflicting) / len(distinct)
        too_many = fraction > self.t.max_conflict_fraction
        limit = f", above the {self.t.max_conflict_fraction:.0%} limit" if too_many else ""
        verb = "appears" if len(conflicting) == 1 else "appear"
        issue(
            Severity.ERROR if too_many else Severity.WARNING,
            "conflicting_labels",
            f"{_plural(len(conflicting), 'text')} ({fraction:.1%} of the distinct texts{limit}) "
            f"{verb} with more than one label, e.g. {_quote(text_of_row(int(rows[first_i])))} as "
            f"{' and '.join(_quote(lb) for lb in first_labels)} "
            f"(training {_rows_text_n(first_rows[:MAX_EXAMPLE_ROWS].tolist(), len(first_rows))}); "
            f"all: training {_rows_text_n(hit_rows[:MAX_EXAMPLE_ROWS].tolist(), len(hit_rows))}. "
            "Fix the labels or remove the rows",
            hit_rows[:MAX_EXAMPLE_ROWS].tolist(),
        )

    def _duplicates(self, rows: Any, issue: Callable[..., None], fields: dict[str, Any]) -> None:
        n = len(rows)
        if not n:
            fields["exact_duplicates"] = fields["near_duplicates"] = 0
            return
        exact_keys = np.frombuffer(self.exact_keys, dtype=np.int64)
        near_keys = np.frombuffer(self.near_keys, dtype=np.int64)
        first_exact = _first_index(exact_keys)  # per row: the first row index with its key
        first_near = _first_index(near_keys)
        index = np.arange(n)
        exact_rep = first_exact < index
        near_rep = ~exact_rep & (first_near < index)
        exact, near = int(exact_rep.sum()), int(near_rep.sum())
        fields["exact_duplicates"] = exact
        fields["near_duplicates"] = near
        if not (exact + near) or (exact + near) / n <= self.t.duplicate_warning_fraction:
            return
        repeated = exact_rep | near_rep
        j = int(np.argmax(repeated))
        earlier = first_exact[j] if exact_rep[j] else first_near[j]
        issue(
            Severity.WARNING,
            "duplicates",
            f"{exact + near} of {n} rows ({_percent(exact + near, n)}) repeat an "
            f"earlier row of their split: {exact} exactly, {near} after normalising case, "
            f"whitespace and punctuation (e.g. training row {int(rows[j])} repeats row {int(rows[earlier])}); "
            "repeated rows weigh more in training: remove them",
            rows[repeated][:MAX_EXAMPLE_ROWS].tolist(),
        )

    def _token_fields(self, rows: Any, issue: Callable[..., None], fields: dict[str, Any]) -> None:
        lengths = np.frombuffer(self.tokens, dtype=np.int64)
        longest = int(lengths.max())
        fields["max_tokens"] = longest
        fields["mean_tokens"] = int(lengths.sum()) / len(lengths)
        if self.max_seq_length is None:
            return
        over = rows[lengths > self.max_seq_length]
        fields["truncated_rows"] = len(over)
        if not len(over):
            return
        first = over[:MAX_EXAMPLE_ROWS].tolist()
        issue(
            Severity.WARNING,
            "over_length",
            f"{len(over)} of {len(rows)} rows are longer than max_seq_length={self.max_seq_length} "
            f"tokens (the longest has {longest}) and will be truncated (training "
            f"{_rows_text_n(first, len(over))}); raise max_seq_length or shorten them",
            first,
        )


def _identical_issue(
    issue: Callable[..., None], train: list[int], validation: list[int], n_train: int, t: ReportThresholds
) -> None:
    """The identical_pair issue (both report builders): a WARNING, an ERROR above the limit."""
    if not train and not validation:
        return
    fraction = len(train) / n_train if n_train else 0.0
    too_many = fraction > t.max_identical_pair_fraction
    limit = f", above the {t.max_identical_pair_fraction:.0%} limit" if too_many else ""
    where = "; ".join(
        f"{s} {_rows_text(rs)}" for s, rs in (("training", train), ("validation", validation)) if rs
    )
    n = len(train) + len(validation)
    issue(
        Severity.ERROR if too_many else Severity.WARNING,
        "identical_pair",
        f"{_plural(n, 'preference pair')} ({_percent(len(train), n_train)} of the training pairs{limit}) "
        f"{'has' if n == 1 else 'have'} the same chosen and rejected reply after normalising: {where}; "
        "such a pair teaches no preference: fix or remove it",
        train or validation,
    )


def _first_index(keys: Any) -> Any:
    """For each position, the first position holding the same key."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def _rows_text_n(first: Sequence[int], count: int) -> str:
    """`_rows_text` from the first rows and how many there are in all."""
    shown = ", ".join(str(r) for r in first[:MAX_EXAMPLE_ROWS])
    more = ", ..." if count > MAX_EXAMPLE_ROWS else ""
    return f"{'row' if count == 1 else 'rows'} {shown}{more}"
