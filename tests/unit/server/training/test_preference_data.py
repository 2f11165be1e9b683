"""Preference pairs through the data path: the file layouts (common JSONL, chat messages,
TRL's conversational and implicit-prompt layouts, CSV) and their drops, inline pairs and their
field errors, the data report's preference checks (identical pairs, duplicate pairs, prompts
shared with validation, lengths and truncation of prompt + the longer reply) in both report
builders, the held-out split keeping one prompt's pairs together, the preference settings, and
the task/served-family check."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tuneserve_server.domain.errors import DataRejected, FailedPrecondition, InvalidRequest
from tuneserve_server.domain.jobs import ChatTurn, JobSpec, PreferenceExample, PreferenceSettings, TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.training.data_report import StreamingReport, build_report
from tuneserve_server.training.datafile import parse_dataset
from tuneserve_server.training.validation import TrainInput, prepare_job

LIMITS = TrainLimits(
    served_task=TaskType.CAUSAL_LM,
    base_model="tiny-llama",
    max_train_examples=1000,
    max_text_chars=200,
    max_lora_rank=64,
    linear_modules=frozenset({"q_proj", "v_proj"}),
    default_targets=("q_proj", "v_proj"),
    count_tokens=lambda texts: [len(t.split()) for t in texts],
)


def _jsonl(rows: list) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def _pairs(n: int, start: int = 0) -> list[PreferenceExample]:
    return [
        PreferenceExample(prompt=f"question {i}", chosen=f"Answer {i}.", rejected=f"no idea {i}")
        for i in range(start, start + n)
    ]


def _input(**changes) -> TrainInput:
    base = TrainInput(
        namespace="team-a",
        adapter_name="style",
        task=TaskType.PREFERENCE,
        request_id="r",
        train=[],
        validation=[],
    )
    return replace(base, **changes)


def test_every_jsonl_layout_parses_and_bad_rows_are_dropped_with_reasons():
    user = {"role": "user", "content": "q"}
    rows = [
        {"prompt": "hi", "chosen": "a", "rejected": "b"},
        {"messages": [{"role": "system", "content": "s"}, user], "chosen": "a", "rejected": "b"},
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y"}],
        },
        {
            "chosen": [user, {"role": "assistant", "content": "x"}],
            "rejected": [user, {"role": "assistant", "content": "z"}],
        },
        {"prompt": "  ", "chosen": "a", "rejected": "b"},  # 5 empty_text
        {"prompt": "p", "chosen": "a"},  # 6 missing_label
        {"prompt": "p", "chosen": "a", "rejected": " "},  # 7 missing_label
        {
            "messages": [user, {"role": "assistant", "content": "a"}],
            "chosen": "a",
            "rejected": "b",
        },  # 8 ends with the reply
        {
            "chosen": [user, {"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "z"}],
        },  # 9
        {
            "prompt": [user],
            "chosen": [{"role": "user", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y"}],
        },  # 10
        "{not json",  # 11
        {"prompt": "p", "chosen": "a" * 150, "rejected": "b" * 60},  # 12 over_length (200 chars)
    ]
    parsed = parse_dataset(_jsonl(rows), "jsonl", TaskType.PREFERENCE, max_text_chars=200)
    got = dict(parsed.examples)
    assert got[1] == PreferenceExample(prompt="hi", chosen="a", rejected="b")
    assert got[2].messages == (ChatTurn("system", "s"), ChatTurn("user", "q")) and got[2].prompt == ""
    assert got[3] == PreferenceExample(chosen="x", rejected="y", messages=(ChatTurn("user", "q"),))
    assert got[4] == PreferenceExample(chosen="x", rejected="z", messages=(ChatTurn("user", "q"),))
    assert parsed.dropped == {
        "empty_text": [5],
        "missing_label": [6, 7],
        "bad_row": [8, 9, 10, 11],
        "over_length": [12],
    }
    assert parsed.total_rows == 12


def test_csv_and_whole_file_errors():
    parsed = parse_dataset(
        b"prompt,chosen,rejected\nhi,a,b\nyo,,b\n", "csv", TaskType.PREFERENCE, max_text_chars=200
    )
    assert parsed.examples == [(1, PreferenceExample(prompt="hi", chosen="a", rejected="b"))]
    assert parsed.dropped == {"missing_label": [2]}
    with pytest.raises(InvalidRequest, match='"rejected"'):
        parse_dataset(b"prompt,chosen\nhi,a\n", "csv", TaskType.PREFERENCE, max_text_chars=200)
    with pytest.raises(InvalidRequest, match='"chosen" and a "rejected"'):
        parse_dataset(
            _jsonl([{"prompt": "p", "completion": "c"}]), "jsonl", TaskType.PREFERENCE, max_text_chars=200
        )


def test_inline_pairs_have_field_errors():
    bad = [
        PreferenceExample(prompt="", chosen="a", rejected="b"),
        PreferenceExample(prompt="p", chosen=" ", rejected="b"),
        PreferenceExample(
            chosen="a", rejected="b", messages=(ChatTurn("user", "q"), ChatTurn("assistant", "a"))
        ),
        PreferenceExample(prompt="p", chosen="a", rejected="b" * 201),
        ("text", "label"),
    ]
    with pytest.raises(InvalidRequest) as err:
        prepare_job(_input(train=[*_pairs(10), *bad]), LIMITS)
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "training_examples[10].preference.prompt",
        "training_examples[11].preference.chosen",
        "training_examples[12].preference.messages",
        "training_examples[13].preference.rejected",
        "training_examples[14]",
    }


def test_report_finds_identical_pairs_duplicates_leaked_prompts_and_lengths():
    train = [(i + 1, p) for i, p in enumerate(_pairs(20))]
    train.append((21, PreferenceExample(prompt="question 3", chosen="Same!", rejected="same")))  # identical
    train.append((22, _pairs(1, 4)[0]))  # exact duplicate of row 5
    train.append(
        (23, PreferenceExample(prompt="QUESTION 5!", chosen="answer 5", rejected="No idea 5"))
    )  # near
    validation = [
        (1, PreferenceExample(prompt="Question 7", chosen="other", rejected="reply")),
        (2, _pairs(1, 50)[0]),
    ]
    report = build_report(
        TaskType.PREFERENCE,
        train,
        validation,
        total_rows=25,
        dropped={},
        token_lengths=lambda texts: [len(t.split()) for t in texts],
        max_seq_length=3,
    )
    codes = {i.code: i for i in report.issues}
    assert codes["identical_pair"].severity.value == "WARNING" and codes["identical_pair"].rows == (21,)
    assert (report.exact_duplicates, report.near_duplicates) == (1, 1)
    assert report.leaked_validation_rows == 1 and codes["leakage"].rows == (1,)
    assert "same prompt" in codes["leakage"].message and codes["leakage"].severity.value == "ERROR"
    # prompt + the longer reply: "question 0" + "no idea 0" = 5 words > 3; not the identical
    # pair ("question 3" + "Same!") nor validation row 1 ("Question 7" + "other"): 3 words
    assert report.max_tokens == 5 and report.truncated_rows == len(train) + len(validation) - 2
    assert not report.ok


def test_streaming_report_agrees_with_build_report():
    rows = [(i + 1, p) for i, p in enumerate(_pairs(12))]
    rows += [(13, PreferenceExample(prompt="q", chosen="x", rejected="X")), (14, rows[0][1])]
    measure = lambda texts: [len(t) for t in texts]  # noqa: E731
    whole = build_report(
        TaskType.PREFERENCE, rows, [], total_rows=14, dropped={}, token_lengths=measure, max_seq_length=20
    )
    stream = StreamingReport(TaskType.PREFERENCE, token_lengths=measure, max_seq_length=20)
    for row, ex in rows:
        stream.example(row, ex)
    assert stream.finish(14, lambda r: "") == whole
    assert {i.code for i in whole.issues} == {"identical_pair", "duplicates", "over_length"}


def test_mostly_identical_pairs_are_refused():
    pairs = [PreferenceExample(prompt=f"q{i}", chosen="same", rejected="same") for i in range(5)] + _pairs(10)
    with pytest.raises(DataRejected) as err:
        prepare_job(_input(train=pairs), LIMITS)
    assert err.value.violations[0].field == "training_examples"
    assert "identical" in err.value.report["issues"][0]["code"]


def test_a_job_spec_of_pairs_with_settings_round_trips_and_holds_out_whole_prompts():
    pairs = [
        PreferenceExample(prompt=f"question {i % 10}", chosen=f"good {i}", rejected=f"bad {i}")
        for i in range(40)
    ]
    spec, report = prepare_job(_input(train=pairs, preference={"beta": 0.3, "loss_type": "ipo"}), LIMITS)
    assert report.ok and report.leaked_validation_rows == 0
    held = {p.prompt for p in spec.validation}
    assert held and not held & {p.prompt for p in spec.train}
    hp = spec.hyperparameters
    assert hp.preference == PreferenceSettings(beta=0.3, loss_type="ipo", label_smoothing=0.0)
    assert (hp.optimizer.batch_size, hp.optimizer.learning_rate) == (4, 5e-4)  # the preference defaults
    assert JobSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"beta": 0.0}, "hyperparameters.preference.beta"),
        ({"beta": 11.0}, "hyperparameters.preference.beta"),
        ({"label_smoothing": 0.5}, "hyperparameters.preference.label_smoothing"),
        ({"loss_type": "hinge"}, "hyperparameters.preference.loss_type"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "hyperparameters.preference.label_smoothing"),
    ],
)
def test_bad_preference_settings_name_the_field(values, field):
    with pytest.raises(InvalidRequest) as err:
        prepare_job(_input(train=_pairs(20), preference=values), LIMITS)
    assert [v.field for v in err.value.violations] == [field]


def test_preference_trains_on_a_causal_lm_server_only():
    with pytest.raises(FailedPrecondition, match="cannot train a preference adapter"):
        prepare_job(_input(train=_pairs(20)), replace(LIMITS, served_task=TaskType.CLASSIFICATION))
