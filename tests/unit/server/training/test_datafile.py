"""parse_dataset: JSONL and CSV files become numbered examples; each bad row is dropped with
its reason and row number; only a file unusable as a whole raises InvalidRequest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.jobs import (
    CausalExample,
    ChatTurn,
    LabelledText,
    TaskType,
)
from tuneserve_server.training.datafile import DROP_REASONS, ParsedRows, parse_dataset

CLS = TaskType.CLASSIFICATION
LM = TaskType.CAUSAL_LM
BANKING77_TRAIN = Path(__file__).resolve().parents[4] / "examples" / "data" / "banking77" / "train.csv"


def _jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parse(data: bytes, fmt: str = "jsonl", task: TaskType = CLS, **kw) -> ParsedRows:
    kw.setdefault("max_text_chars", 1000)
    return parse_dataset(data, fmt, task, **kw)


def _file_error(data: bytes, fmt: str = "jsonl", task: TaskType = CLS, **kw) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        _parse(data, fmt, task, **kw)
    assert err.value.violations and err.value.violations[0].field in err.value.message
    return err.value


# ---------------------------------------------------------------- classification, JSONL
def test_jsonl_rows_become_numbered_examples_with_stripped_labels():
    parsed = _parse(_jsonl({"text": " hi there ", "label": " greet "}, {"text": "bye", "label": "leave"}))
    assert parsed.total_rows == 2 and parsed.usable_rows == 2 and parsed.dropped == {}
    assert parsed.examples == [
        (1, LabelledText(" hi there ", "greet")),  # texts are kept exactly, labels stripped
        (2, LabelledText("bye", "leave")),
    ]


def test_numeric_json_labels_become_strings():
    parsed = _parse(_jsonl({"text": "a", "label": 7}, {"text": "b", "label": 0}, {"text": "c", "label": 2.5}))
    assert [ex.label for _, ex in parsed.examples] == ["7", "0", "2.5"]


def test_each_bad_row_is_dropped_with_its_reason_and_the_rest_is_kept():
    lines = [
        json.dumps({"text": "good one", "label": "a"}).encode(),  # 1
        b'{"text": "broken", "label": ',  # 2 unparseable
        json.dumps(["text", "label"]).encode(),  # 3 not an object
        json.dumps({"text": 42, "label": "a"}).encode(),  # 4 wrong type of text
        json.dumps({"text": "x", "label": True}).encode(),  # 5 a bool is not a label
        json.dumps({"text": "x", "label": ["a"]}).encode(),  # 6 nor is a list
        b'{"text": "x", "label": NaN}',  # 7 nor NaN
        json.dumps({"text": "   ", "label": "a"}).encode(),  # 8 blank text
        json.dumps({"label": "a"}).encode(),  # 9 no text
        json.dumps({"text": "no label"}).encode(),  # 10
        json.dumps({"text": "null label", "label": None}).encode(),  # 11
        json.dumps({"text": "blank label", "label": "  "}).encode(),  # 12
        '{"text": "caf\xe9", "label": "a"}'.encode("latin-1"),  # 13 not UTF-8
        b'{"text": "lone \\ud800 surrogate", "label": "a"}',  # 14 valid JSON, not encodable
        json.dumps({"text": "x" * 1001, "label": "a"}).encode(),  # 15 over max_text_chars
        json.dumps({"text": "x" * 1000, "label": "b"}).encode(),  # 16 exactly at the limit: kept
    ]
    parsed = _parse(b"\n".join(lines) + b"\n")
    assert parsed.total_rows == 16
    assert [row for row, _ in parsed.examples] == [1, 16]
    assert parsed.dropped == {
        "bad_row": [2, 3, 4, 5, 6, 7],
        "empty_text": [8, 9],
        "missing_label": [10, 11, 12],
        "bad_utf8": [13, 14],
        "over_length": [15],
    }
    assert set(parsed.dropped) <= set(DROP_REASONS)


def test_blank_lines_are_skipped_and_not_counted_crlf_and_bom_are_accepted():
    data = (
        b"\xef\xbb\xbf" + b'{"text": "one", "label": "a"}\r\n\r\n   \r\n{"text": "two", "label": "b"}\r\n\n'
    )
    parsed = _parse(data)
    assert parsed.total_rows == 2
    assert parsed.examples == [(1, LabelledText("one", "a")), (2, LabelledText("two", "b"))]


def test_a_line_separator_inside_a_json_string_does_not_split_the_row():
    parsed = _parse(_jsonl({"text": "first\u2028second\x85third", "label": "a"}))
    assert parsed.examples == [(1, LabelledText("first\u2028second\x85third", "a"))]


def test_jsonl_field_names_can_be_overridden():
    parsed = _parse(
        _jsonl({"sentence": "s", "intent": "i", "text": "ignored"}),
        text_field="sentence",
        label_field="intent",
    )
    assert parsed.examples == [(1, LabelledText("s", "i"))]


def test_jsonl_without_the_text_key_in_any_row_is_refused_naming_the_key():
    err = _file_error(
        _jsonl({"sentence": "s", "label": "a"}, {"sentence": "t", "label": "b"}), field="header"
    )
    assert err.violations[0].field == "header"
    assert '"text"' in err.message and "sentence" in err.message and "text_field" in err.message


def test_jsonl_without_the_label_key_in_any_row_is_refused():
    err = _file_error(_jsonl({"text": "s", "category": "a"}))
    assert err.violations[0].field == "dataset"  # the default field path
    assert '"label"' in err.message and "category" in err.message and "label_field" in err.message


def test_jsonl_where_some_rows_lack_the_label_reports_them_instead_of_refusing():
    parsed = _parse(_jsonl({"text": "s", "label": "a"}, {"text": "t"}))
    assert parsed.dropped == {"missing_label": [2]}


def test_jsonl_with_only_unreadable_rows_is_a_report_not_a_refusal():
    parsed = _parse(b"not json\n\xff\xfe\xfd\n")
    assert parsed.total_rows == 2 and parsed.examples == []
    assert parsed.dropped == {"bad_row": [1], "bad_utf8": [2]}


# ---------------------------------------------------------------- whole-file errors
@pytest.mark.parametrize("data", [b"", b"   \n\r\n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_empty_file_is_refused(data, fmt):
    err = _file_error(data, fmt, field="dataset_id")
    assert err.violations[0].field == "dataset_id" and "empty" in err.message


def test_a_utf16_file_is_refused_with_advice():
    err = _file_error("text,label\nhi,a\n".encode("utf-16"), "csv")
    assert "UTF-16" in err.message and "UTF-8" in err.message


def test_an_unknown_format_is_refused():
    err = _file_error(b"text,label\nhi,a\n", "xlsx")
    assert "xlsx" in err.message


def test_the_format_name_is_not_case_sensitive():
    assert _parse(b"text,label\nhi,a\n", "CSV").usable_rows == 1


# ---------------------------------------------------------------- CSV
def test_csv_rows_with_quoted_commas_quotes_and_newlines():
    data = (
        b"text,label\n"
        b'"hello, world",greet\n'
        b'"she said ""hi""",quote\n'
        b'"line one\nline two\n\nline four",multi\n'
        b"plain, spaced \n"
    )
    parsed = _parse(data, "csv")
    assert parsed.total_rows == 4 and parsed.dropped == {}
    assert [ex for _, ex in parsed.examples] == [
        LabelledText("hello, world", "greet"),
        LabelledText('she said "hi"', "quote"),
        LabelledText("line one\nline two\n\nline four", "multi"),
        LabelledText("plain", "spaced"),
    ]
    assert [row for row, _ in parsed.examples] == [1, 2, 3, 4]  # the header is not a row


def test_csv_with_bom_crlf_blank_lines_and_spreadsheet_empty_rows():
    data = b'\xef\xbb\xbftext,label\r\n\r\none,a\r\n,\r\n\r\n"two\r\nlines",b\r\n , \r\n'
    parsed = _parse(data, "csv")
    assert parsed.total_rows == 2
    assert parsed.examples == [(1, LabelledText("one", "a")), (2, LabelledText("two\r\nlines", "b"))]


def test_csv_bad_rows_are_dropped_one_by_one():
    data = (
        b"text,label\n"
        b"good,a\n"  # 1
        b"too,many,cells\n"  # 2
        b"too few\n"  # 3
        b",a\n"  # 4 empty text
        b"no label,\n"  # 5
        b"caf\xe9,a\n"  # 6 latin-1
        b"   ,  \t\n"  # blank cells only: skipped
        b"good again,b\n" + b"y" * 1001 + b",a\n"  # 7  # 8
    )
    parsed = _parse(data, "csv")
    assert parsed.total_rows == 8
    assert [row for row, _ in parsed.examples] == [1, 7]
    assert parsed.dropped == {
        "bad_row": [2, 3],
        "empty_text": [4],
        "missing_label": [5],
        "bad_utf8": [6],
        "over_length": [8],
    }


def test_a_bad_utf8_byte_inside_a_quoted_multiline_cell_drops_only_that_row():
    data = b'text,label\n"ok\nfine",a\n"bad \xff\nbytes",b\nlast,c\n'
    parsed = _parse(data, "csv")
    assert parsed.dropped == {"bad_utf8": [2]}
    assert [(row, ex.text) for row, ex in parsed.examples] == [(1, "ok\nfine"), (3, "last")]


def test_a_quote_left_open_swallows_the_rest_of_the_file_as_one_bad_row():
    data = b'text,label\nfine,a\n"never closed,b\nmore,c\nrows,d\n'
    parsed = _parse(data, "csv")
    assert parsed.total_rows == 2
    assert parsed.examples == [(1, LabelledText("fine", "a"))]
    assert parsed.dropped == {"bad_row": [2]}


def test_csv_column_names_can_be_overridden_and_match_regardless_of_case():
    data = b"Id,Utterance,Intent\n1,hello,greet\n"
    parsed = _parse(data, "csv", text_field="utterance", label_field="INTENT")
    assert parsed.examples == [(1, LabelledText("hello", "greet"))]


def test_an_exact_case_match_wins_over_a_case_insensitive_one():
    data = b"Text,text,label\nupper,lower,a\n"
    assert _parse(data, "csv").examples == [(1, LabelledText("lower", "a"))]


def test_a_csv_header_without_the_needed_column_is_refused_naming_the_columns():
    err = _file_error(b"text,category\nhi,greet\n", "csv", field="header.label_field")
    assert err.violations[0].field == "header.label_field"
    assert '"label"' in err.message and "text, category" in err.message and "label_field" in err.message


def test_a_csv_header_naming_a_column_twice_is_refused():
    err = _file_error(b"text,label,label\nhi,a,b\n", "csv")
    assert "more than one" in err.message


def test_a_csv_header_that_is_not_utf8_is_refused():
    err = _file_error(b"t\xe9xt,label\nhi,a\n", "csv")
    assert "UTF-8" in err.message


def test_a_csv_with_a_header_and_no_rows_is_refused():
    err = _file_error(b"text,label\r\n\r\n", "csv")
    assert "no rows" in err.message


def test_the_full_banking77_training_file_parses():
    parsed = _parse(BANKING77_TRAIN.read_bytes(), "csv", label_field="category")
    assert parsed.total_rows == parsed.usable_rows == 10003
    assert parsed.dropped == {}
    assert len({ex.label for _, ex in parsed.examples}) == 77
    assert parsed.examples[0] == (1, LabelledText("I am still waiting on my card?", "card_arrival"))


# ---------------------------------------------------------------- causal LM
def test_causal_jsonl_prompt_completion_and_messages():
    parsed = _parse(
        _jsonl(
            {"prompt": "Q: 2+2?", "completion": " 4"},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!", "name": "bot"},  # extra keys ignored
                ]
            },
        ),
        task=LM,
    )
    assert parsed.dropped == {}
    assert parsed.examples == [
        (1, CausalExample(prompt="Q: 2+2?", completion=" 4")),  # kept as written, not stripped
        (
            2,
            CausalExample(
                messages=(
                    ChatTurn("system", "Be brief."),
                    ChatTurn("user", "Hi"),
                    ChatTurn("assistant", "Hello!"),
                )
            ),
        ),
    ]


def test_causal_bad_conversations_are_dropped():
    def chat(*turns):
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    rows = [
        chat(("user", "hi"), ("assistant", "hello")),  # 1 good
        chat(("user", "hi")),  # 2 does not end with the assistant
        chat(("user", "hi"), ("robot", "beep"), ("assistant", "x")),  # 3 unknown role
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},  # 4 no content
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},  # 5
        {"messages": "hi"},  # 6 not a list
        {"messages": []},  # 7
        {"messages": ["hi", {"role": "assistant", "content": "x"}]},  # 8 a turn is not an object
        {"messages": [{"role": ["user"], "content": "x"}, {"role": "assistant", "content": "y"}]},  # 9
        chat(("assistant", "alone")),  # 10 nothing before the reply
        chat(("system", "  "), ("assistant", "x")),  # 11 blank before the reply
        chat(("user", "hi"), ("assistant", " ")),  # 12 blank reply
        chat(("user", "a" * 600), ("assistant", "b" * 401)),  # 13 1001 characters together
        {"prompt": "", "completion": "x"},  # 14
        {"prompt": "x", "completion": ""},  # 15
        {"prompt": "x"},  # 16
        {"prompt": "x", "completion": 3},  # 17
        {"prompt": "a" * 500, "completion": "b" * 501},  # 18
    ]
    parsed = _parse(_jsonl(*rows), task=LM)
    assert [row for row, _ in parsed.examples] == [1]
    assert parsed.dropped == {
        "bad_row": [2, 3, 4, 5, 6, 7, 8, 9, 17],
        "empty_text": [10, 11, 14],
        "missing_label": [12, 15, 16],
        "over_length": [13, 18],
    }


def test_causal_jsonl_with_neither_prompt_nor_messages_is_refused():
    err = _file_error(_jsonl({"question": "q", "answer": "a"}), task=LM)
    assert '"prompt"' in err.message and '"messages"' in err.message and "question" in err.message


def test_causal_csv_prompt_completion_and_overridden_names():
    parsed = _parse(b'prompt,completion\n"Say hi",Hi!\n', "csv", task=LM)
    assert parsed.examples == [(1, CausalExample(prompt="Say hi", completion="Hi!"))]
    parsed = _parse(
        b"question,answer\nWhy?,Because.\n", "csv", task=LM, text_field="question", label_field="answer"
    )
    assert parsed.examples == [(1, CausalExample(prompt="Why?", completion="Because."))]


def test_causal_csv_without_a_completion_column_is_refused():
    err = _file_error(b"prompt,response\nq,a\n", "csv", task=LM)
    assert '"completion"' in err.message and "response" in err.message
