"""StreamingReport: an upload's report, built row by row from the parsed stream, is the one
build_report gives on the whole file (every check that applies to a training split alone),
and the parser reads a file split into chunks anywhere exactly as it reads it whole."""

from __future__ import annotations

import random

import pytest

from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.training.data_report import StreamingReport, build_report
from tuneserve_server.training.datafile import ParsedRows, parse_dataset, scan_dataset


def _file(seed: int) -> bytes:
    rng = random.Random(seed)
    labels = [f"intent_{i}" for i in range(rng.randint(1, 6))]
    texts = [f"how do I do thing {i}?" + " now" * (i % 2) for i in range(rng.randint(3, 40))]
    lines = []
    for _ in range(rng.randint(1, 120)):
        kind = 0.0 if seed % 10 == 9 else rng.random()  # every row dropped
        text = rng.choice(texts)
        if seed % 7 == 0 and rng.random() < 0.9:  # imbalanced
            lines.append(f'{{"text": "{text}", "label": 7}}'.encode())
            continue
        if kind < 0.05:
            lines.append(b"not json")
        elif kind < 0.08:
            lines.append(b'{"text": "", "label": "x"}')
        elif kind < 0.12:
            lines.append(f'{{"text": "{text.upper()}!!", "label": "{rng.choice(labels)}"}}'.encode())
        elif kind < 0.14:
            lines.append(b'{"text": "' + b"long " * 60 + b'", "label": "a"}')
        else:
            lines.append(f'{{"text": "{text}", "label": "{rng.choice(labels)}"}}'.encode())
        if rng.random() < 0.05:
            lines.append(b"")
    return b"\xef\xbb\xbf" * (seed % 2) + b"\r\n".join(lines) + b"\n"


def _tokens(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def _chunks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 17)
        out.append(data[i : i + n])
        i += n
    return out


@pytest.mark.parametrize("seed", range(40))
def test_the_streamed_report_equals_the_whole_file_report(seed):
    data = _file(seed)
    kw = {"max_text_chars": 200, "field": "header"}
    whole = parse_dataset(data, "jsonl", TaskType.CLASSIFICATION, **kw)
    expected = build_report(
        TaskType.CLASSIFICATION,
        whole.examples,
        [],
        total_rows=whole.total_rows,
        dropped=whole.dropped,
        token_lengths=_tokens,
        max_seq_length=5,
    )
    stream = StreamingReport(TaskType.CLASSIFICATION, token_lengths=_tokens, max_seq_length=5)
    stream.TOKEN_BATCH = 7  # several batches
    total = scan_dataset(_chunks(data, seed), "jsonl", TaskType.CLASSIFICATION, stream, **kw)
    texts = {row: ex.text for row, ex in whole.examples}
    assert stream.finish(total, texts.__getitem__) == expected


@pytest.mark.parametrize("seed", range(10))
def test_chunked_csv_and_jsonl_parse_as_the_whole_file(seed):
    csv_data = b'text,label\r\n"a, ""quoted""\nline",x\r\nplain,y\r\n\r\n,z\r\n' * (seed + 1)
    for data, fmt in ((csv_data, "csv"), (_file(seed), "jsonl")):
        whole = parse_dataset(data, fmt, TaskType.CLASSIFICATION, max_text_chars=200)
        parts = ParsedRows(0)
        parts.total_rows = scan_dataset(
            _chunks(data, seed), fmt, TaskType.CLASSIFICATION, parts, max_text_chars=200
        )
        assert parts == whole


def test_causal_lm_rows_stream_to_the_same_report():
    data = b"\n".join(
        [b'{"prompt": "hi", "completion": "there"}'] * 3
        + [b'{"prompt": "Hi!", "completion": "there"}', b'{"prompt": "", "completion": "x"}']
    )
    whole = parse_dataset(data, "jsonl", TaskType.CAUSAL_LM, max_text_chars=100)
    expected = build_report(
        TaskType.CAUSAL_LM, whole.examples, [], total_rows=whole.total_rows, dropped=whole.dropped
    )
    stream = StreamingReport(TaskType.CAUSAL_LM)
    total = scan_dataset(_chunks(data, 3), "jsonl", TaskType.CAUSAL_LM, stream, max_text_chars=100)
    assert stream.finish(total, lambda row: "") == expected
