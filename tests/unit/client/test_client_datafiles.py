"""Reading training examples from .csv and .jsonl files."""

from __future__ import annotations

import pytest

from tuneserve_client.datafiles import DataFileError, read_causal_examples, read_examples


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_csv_reads_text_and_label_ignoring_other_columns(tmp_path):
    path = _write(
        tmp_path,
        "train.csv",
        'id,label,text\n1,pos,"great, really"\n2,neg,"two\nlines"\n\n3,pos,ok\n',
    )
    assert read_examples(path) == [("great, really", "pos"), ("two\nlines", "neg"), ("ok", "pos")]


def test_csv_with_bom_and_crlf_and_padded_header(tmp_path):
    path = _write(tmp_path, "train.CSV", b"\xef\xbb\xbftext , label\r\nhello,greet\r\n")
    assert read_examples(str(path)) == [("hello", "greet")]


def test_csv_missing_column_names_file_and_header_line(tmp_path):
    path = _write(tmp_path, "train.csv", "sentence,label\nhi,a\n")
    with pytest.raises(DataFileError) as info:
        read_examples(path)
    assert info.value.line == 1
    assert info.value.path == str(path)
    assert "'text'" in str(info.value) and str(info.value).startswith(f"{path}:1: ")


def test_csv_short_row_reports_its_first_physical_line(tmp_path):
    path = _write(tmp_path, "train.csv", 'text,label\n"a\nb",x\nonly-text\n')
    with pytest.raises(DataFileError) as info:
        read_examples(path)
    assert info.value.line == 4
    assert "missing 'label'" in str(info.value)


def test_csv_empty_label_is_an_error(tmp_path):
    path = _write(tmp_path, "train.csv", "text,label\nhello,\n")
    with pytest.raises(DataFileError, match=r":2: empty 'label'"):
        read_examples(path)


def test_jsonl_reads_objects_skipping_blank_lines_and_stringifying_int_labels(tmp_path):
    path = _write(
        tmp_path,
        "train.jsonl",
        '{"text": "hi", "label": "greet", "extra": 1}\n\n{"text": "bye", "label": 3}\n',
    )
    assert read_examples(path) == [("hi", "greet"), ("bye", "3")]


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', 2, "invalid JSON"),
        ('{"text": "a", "label": "x"}\n\n["b", "y"]\n', 3, "expected a JSON object"),
        ('{"text": "a"}\n', 1, "missing 'label'"),
        ('{"text": 5, "label": "x"}\n', 1, "'text' must be a string"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, content, line, fragment):
    path = _write(tmp_path, "train.jsonl", content)
    with pytest.raises(DataFileError) as info:
        read_examples(path)
    assert info.value.line == line
    assert fragment in info.value.message
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("train.txt", "x", "unsupported file type '.txt'"),
        ("empty.csv", "", "no examples"),
        ("header-only.csv", "text,label\n", "no examples"),
        ("blank.jsonl", "\n\n", "no examples"),
        ("latin1.jsonl", b'{"text": "caf\xe9", "label": "x"}\n', "not UTF-8"),
    ],
)
def test_whole_file_errors(tmp_path, name, content, fragment):
    path = _write(tmp_path, name, content)
    with pytest.raises(DataFileError) as info:
        read_examples(path)
    assert info.value.line is None
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="No such file"):
        read_examples(tmp_path / "absent.csv")


def test_csv_with_other_column_names(tmp_path):
    path = tmp_path / "b77.csv"
    path.write_text("text,category\nwhere is my card,card_arrival\n", encoding="utf-8")
    assert read_examples(path, label_field="category") == [("where is my card", "card_arrival")]
    with pytest.raises(DataFileError, match="lacks column 'query'"):
        read_examples(tmp_path / "b77.csv", label_field="category", text_field="query")


def test_jsonl_with_other_keys(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "hi", "intent": "greet"}\n', encoding="utf-8")
    assert read_examples(path, text_field="q", label_field="intent") == [("hi", "greet")]


# --- causal LM ---------------------------------------------------------------------------


def test_causal_jsonl_reads_prompt_completion_rows_and_conversations(tmp_path):
    path = _write(
        tmp_path,
        "lm.jsonl",
        (
            '{"prompt": "Hi", "completion": "Hello!", "id": 1}\n'
            "\n"
            '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},'
            ' {"role": "assistant", "content": "Hey."}]}\n'
        ),
    )
    assert read_causal_examples(path) == [
        {"prompt": "Hi", "completion": "Hello!"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hey."},
            ]
        },
    ]


def test_causal_csv_with_renamed_columns(tmp_path):
    path = _write(tmp_path, "lm.csv", 'question,answer\n"Where, exactly?",Here\n')
    assert read_causal_examples(path, prompt_field="question", completion_field="answer") == [
        {"prompt": "Where, exactly?", "completion": "Here"}
    ]
    with pytest.raises(DataFileError, match="lacks column 'prompt' and 'completion'"):
        read_causal_examples(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "Hi"}', "missing 'completion'"),
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "messages[0] must be an object"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0]: role must be one of"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "the last message must be the assistant"),
    ],
)
def test_causal_jsonl_errors_name_the_line(tmp_path, line, message):
    path = _write(tmp_path, "lm.jsonl", '{"prompt": "a", "completion": "b"}\n' + line + "\n")
    with pytest.raises(DataFileError) as info:
        read_causal_examples(path)
    assert info.value.line == 2 and message in str(info.value)


def test_classification_reading_ignores_messages(tmp_path):
    path = _write(tmp_path, "train.jsonl", '{"messages": [], "text": "t", "label": "l"}\n')
    assert read_examples(path) == [("t", "l")]
