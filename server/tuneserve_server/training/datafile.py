"""Parses an uploaded dataset file (JSONL or CSV) into examples, one row at a time.

A bad row is dropped with a reason and its row number; it never sinks the file. Only a file
that is unusable as a whole (empty, not UTF-8 where it must be, a CSV header or JSONL keys
without the needed fields) raises `InvalidRequest` naming the caller's field path.

Rows are numbered 1, 2, 3, ... over the non-blank data rows: blank lines (and CSV rows whose
cells are all empty, as spreadsheets export them) are skipped and not counted, and the CSV
header is not a row. A UTF-8 byte-order mark and CRLF line endings are accepted; each JSONL
line / CSV record is decoded on its own, so one row with bad bytes is one `bad_utf8` drop.

Drop reasons (the proto's `DroppedRows.reason`):
    empty_text     classification text / causal-LM prompt missing or blank; for chat
                   messages, no content before the final assistant turn
    missing_label  classification label / causal-LM completion (or final assistant
                   content) missing or blank
    bad_utf8       the row's bytes are not UTF-8 (or a JSON string holds a lone surrogate)
    bad_row        unparseable JSON, not an object, wrong value types, a CSV row with the
                   wrong number of cells, a `messages` list with an unknown role, a turn
                   that is not {"role", "content"} strings, or no final assistant turn
    over_length    more than `max_text_chars` characters (causal LM: all of the example's
                   text together)

Classification labels are stripped; JSON labels may be numbers (`7` -> "7"). Texts, prompts
and completions are kept exactly as written. In JSONL a causal-LM row with a `messages` key is
read as a conversation, otherwise as prompt / completion.

Preference pairs (TaskType.PREFERENCE) carry a prompt and two replies, `chosen` and
`rejected`. JSONL takes the common layout `{"prompt", "chosen", "rejected"}` (strings), the
chat form `{"messages": [...prompt turns], "chosen", "rejected"}`, and TRL's conversational
layouts: `{"prompt": [turns], "chosen": [assistant turn], "rejected": [assistant turn]}`, or
with no prompt `{"chosen": [turns], "rejected": [turns]}` whose turns agree up to the final
assistant reply (the shared turns are the prompt). CSV takes prompt, chosen and rejected
columns. `text_field` renames the prompt key. A blank prompt is `empty_text`, a missing or
blank reply `missing_label`, prompt turns that end with an assistant turn or replies that are
not one assistant turn `bad_row`."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.domain.jobs import (
    CausalExample,
    ChatTurn,
    Example,
    LabelledText,
    PreferenceExample,
    TaskType,
)

EMPTY_TEXT = "empty_text"
MISSING_LABEL = "missing_label"
BAD_UTF8 = "bad_utf8"
BAD_ROW = "bad_row"
OVER_LENGTH = "over_length"
DROP_REASONS = (EMPTY_TEXT, MISSING_LABEL, BAD_UTF8, BAD_ROW, OVER_LENGTH)

FORMATS = ("jsonl", "csv")
ROLES = frozenset({"system", "user", "assistant"})

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class RowSink(Protocol):
    """Where parsed rows go, one at a time, in row order."""

    def example(self, row: int, example: Example) -> None: ...

    def drop(self, row: int, reason: str) -> None: ...


@dataclass
class ParsedRows:
    """`total_rows` counts every non-blank data row, usable or not."""

    total_rows: int
    examples: list[tuple[int, Example]] = field(default_factory=list)  # (row number, example)
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> row numbers

    @property
    def usable_rows(self) -> int:
        return len(self.examples)

    def example(self, row: int, example: Example) -> None:
        self.examples.append((row, example))

    def drop(self, row: int, reason: str) -> None:
        self.dropped.setdefault(reason, []).append(row)


class _Drop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def default_fields(task: TaskType) -> tuple[str, str]:
    """The (text, label) field names when the caller names none."""
    if task is TaskType.CAUSAL_LM:
        return "prompt", "completion"
    if task is TaskType.PREFERENCE:
        return "prompt", "chosen"
    return "text", "label"


def parse_dataset(
    data: bytes | Iterable[bytes],
    fmt: str,
    task: TaskType,
    *,
    text_field: str = "",
    label_field: str = "",
    max_text_chars: int,
    field: str = "dataset",
) -> ParsedRows:
    """Every row of `data` (the file, or its bytes in pieces) as an example or a drop.
    `text_field` / `label_field` rename the text and label columns / keys (causal LM:
    prompt and completion); `field` is the request field path that whole-file errors name."""
    parsed = ParsedRows(0)
    parsed.total_rows = scan_dataset(
        [data] if isinstance(data, bytes | bytearray) else data,
        fmt,
        task,
        parsed,
        text_field=text_field,
        label_field=label_field,
        max_text_chars=max_text_chars,
        field=field,
    )
    return parsed


def scan_dataset(
    chunks: Iterable[bytes],
    fmt: str,
    task: TaskType,
    sink: RowSink,
    *,
    text_field: str = "",
    label_field: str = "",
    max_text_chars: int,
    field: str = "dataset",
) -> int:
    """`parse_dataset` as a stream: the file arrives as `chunks` (split anywhere), each row
    goes to `sink` as it is read, and nothing but the current line is held. Returns the
    number of rows (`total_rows`); whole-file errors raise as in `parse_dataset`."""
    fmt_name = fmt.strip().lower()
    if fmt_name not in FORMATS:
        raise InvalidRequest.field(field, f"unknown format {fmt!r}; use jsonl or csv")
    if not isinstance(task, TaskType):
        raise InvalidRequest.field(field, "a task (classification, causal_lm or preference) is required")
    default_text, default_label = default_fields(task)
    names = (
        text_field or default_text,
        default_label if task is TaskType.PREFERENCE else label_field or default_label,
    )
    parser = _Parser(task, names, max_text_chars, sink)
    lines = _lines(_without_bom(chunks, field))
    if fmt_name == "jsonl":
        return parser.parse_jsonl(lines, field)
    return parser.parse_csv(lines, field)


def _without_bom(chunks: Iterable[bytes], field_path: str) -> Iterator[bytes]:
    """The chunks, less a leading UTF-8 byte-order mark; a UTF-16 one is refused."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= len(_UTF8_BOM):
            break
    if head.startswith(_UTF8_BOM):
        head = head[len(_UTF8_BOM) :]
    elif head.startswith(_UTF16_BOMS):
        raise InvalidRequest.field(field_path, "the file is UTF-16 encoded; save it as UTF-8")
    if head:
        yield head
    yield from it


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """`b"".join(chunks).split(b"\n")`, one line at a time (bytes split: U+2028 etc.
    inside a string stay put)."""
    rest = b""
    for chunk in chunks:
        if b"\n" not in chunk:
            rest += chunk
            continue
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts
    yield rest


class _Parser:
    def __init__(self, task: TaskType, names: tuple[str, str], max_text_chars: int, sink: RowSink) -> None:
        self.task = task
        self.text_name, self.label_name = names
        self.max_chars = max_text_chars
        self.sink = sink
        self.total_rows = 0

    def _row(self, build: Any, *args: Any) -> None:
        self.total_rows += 1
        row = self.total_rows
        try:
            example = build(*args)
        except _Drop as drop:
            self.sink.drop(row, drop.reason)
        else:
            self.sink.example(row, example)

    # ------------------------------------------------------------------ JSONL
    def parse_jsonl(self, lines: Iterable[bytes], field_path: str) -> int:
        objects = 0
        has_text = has_label = False
        keys_seen: set[str] = set()
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            obj = _json_object(line)
            if isinstance(obj, dict):
                objects += 1
                if len(keys_seen) < 50:
                    keys_seen.update(str(k) for k in obj)
                if self.task is TaskType.PREFERENCE:
                    has_label = has_label or ("chosen" in obj and "rejected" in obj)
                    has_text = has_text or self.text_name in obj or "messages" in obj
                    has_text = has_text or isinstance(obj.get("chosen"), list)  # TRL implicit prompt
                else:
                    has_text = has_text or self.text_name in obj or self._is_chat(obj)
                    has_label = has_label or self.label_name in obj or self._is_chat(obj)
            self._row(self._from_json, obj)
        if self.total_rows == 0:
            raise InvalidRequest.field(field_path, "the file is empty")
        if objects:
            found = ", ".join(sorted(keys_seen)[:10]) or "none"
            if not has_text:
                raise InvalidRequest.field(
                    field_path,
                    f'no row has a "{self.text_name}" key{self._chat_hint()} '
                    f"(keys found: {found}); name the text key with text_field",
                )
            if not has_label and self.task is TaskType.PREFERENCE:
                raise InvalidRequest.field(
                    field_path, f'no row has both a "chosen" and a "rejected" key (keys found: {found})'
                )
            if not has_label:
                raise InvalidRequest.field(
                    field_path,
                    f'no row has a "{self.label_name}" key (keys found: {found}); '
                    "name the label key with label_field",
                )
        return self.total_rows

    def _is_chat(self, obj: dict[str, Any]) -> bool:
        return self.task is TaskType.CAUSAL_LM and "messages" in obj

    def _chat_hint(self) -> str:
        return ' or "messages"' if self.task in (TaskType.CAUSAL_LM, TaskType.PREFERENCE) else ""

    def _from_json(self, obj: Any) -> Example:
        if isinstance(obj, _Drop):
            raise obj
        if not isinstance(obj, dict):
            raise _Drop(BAD_ROW)
        if self.task is TaskType.PREFERENCE:
            return self._preference_json(obj)
        if self._is_chat(obj):
            return self._chat(obj["messages"])
        return self._example(obj.get(self.text_name), obj.get(self.label_name))

    # ------------------------------------------------------------------ CSV
    def parse_csv(self, lines: Iterable[bytes], field_path: str) -> int:
        records = _csv_records(lines)
        header_bytes = next(records, None)
        if header_bytes is None:
            raise InvalidRequest.field(field_path, "the file is empty")
        try:
            header = [c.strip() for c in _csv_cells(header_bytes.decode("utf-8"))]
        except UnicodeDecodeError:
            raise InvalidRequest.field(
                field_path, "the CSV header row is not valid UTF-8; save the file as UTF-8"
            ) from None
        except (csv.Error, _Drop):
            raise InvalidRequest.field(field_path, "the CSV header row cannot be parsed") from None
        text_col = _column(header, self.text_name, "text_field", field_path)
        label_col = _column(header, self.label_name, "label_field", field_path)
        self.rejected_col = (
            _column(header, "rejected", "a rejected column", field_path)
            if self.task is TaskType.PREFERENCE
            else -1
        )
        for record in records:
            self._csv_record(record, len(header), text_col, label_col)
        if self.total_rows == 0:
            raise InvalidRequest.field(field_path, "the CSV file has a header but no rows")
        return self.total_rows

    def _csv_record(self, record: bytes, width: int, text_col: int, label_col: int) -> None:
        try:
            cells: list[str] | _Drop = _csv_cells(record.decode("utf-8"))
        except UnicodeDecodeError:
            cells = _Drop(BAD_UTF8)
        except (csv.Error, _Drop):
            cells = _Drop(BAD_ROW)
        if isinstance(cells, list) and not any(c.strip() for c in cells):
            return  # a spreadsheet's empty row: blank, not counted
        self._row(self._from_cells, cells, width, text_col, label_col)

    def _from_cells(self, cells: list[str] | _Drop, width: int, text_col: int, label_col: int) -> Example:
        if isinstance(cells, _Drop):
            raise cells
        if len(cells) != width:
            raise _Drop(BAD_ROW)
        if self.task is TaskType.PREFERENCE:
            return self._pair(cells[text_col], (), cells[label_col], cells[self.rejected_col])
        return self._example(cells[text_col], cells[label_col])

    # ------------------------------------------------------------------ examples
    def _example(self, text: Any, label: Any) -> Example:
        if self.task is TaskType.CAUSAL_LM:
            prompt = _string(text, EMPTY_TEXT)
            completion = _string(label, MISSING_LABEL)
            if not prompt.strip():
                raise _Drop(EMPTY_TEXT)
            if not completion.strip():
                raise _Drop(MISSING_LABEL)
            self._check_length(len(prompt) + len(completion))
            return CausalExample(prompt=prompt, completion=completion)
        text = _string(text, EMPTY_TEXT)
        if isinstance(label, int | float) and not isinstance(label, bool):
            if not math.isfinite(label):
                raise _Drop(BAD_ROW)  # NaN / Infinity
            label = str(label)
        label = _string(label, MISSING_LABEL).strip()
        if not text.strip():
            raise _Drop(EMPTY_TEXT)
        if not label:
            raise _Drop(MISSING_LABEL)
        self._check_length(len(text))
        return LabelledText(text, label)

    def _chat(self, messages: Any) -> CausalExample:
        if not isinstance(messages, list) or not messages:
            raise _Drop(BAD_ROW)
        turns = []
        for m in messages:
            if not isinstance(m, dict):
                raise _Drop(BAD_ROW)
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or role not in ROLES or not isinstance(content, str):
                raise _Drop(BAD_ROW)
            turns.append(ChatTurn(role, _string(content, BAD_ROW)))
        if turns[-1].role != "assistant":
            raise _Drop(BAD_ROW)
        if not any(t.content.strip() for t in turns[:-1]):
            raise _Drop(EMPTY_TEXT)
        if not turns[-1].content.strip():
            raise _Drop(MISSING_LABEL)
        self._check_length(sum(len(t.content) for t in turns))
        return CausalExample(messages=tuple(turns))

    # ------------------------------------------------------------------ preference pairs
    def _preference_json(self, obj: dict[str, Any]) -> PreferenceExample:
        prompt, chosen, rejected = obj.get(self.text_name), obj.get("chosen"), obj.get("rejected")
        turns: tuple[ChatTurn, ...] = ()
        if isinstance(prompt, list):  # TRL conversational: the prompt as turns
            turns, prompt = self._turns(prompt), ""
        elif prompt is None and "messages" in obj:
            turns, prompt = self._turns(obj["messages"]), ""
        if isinstance(chosen, list) or isinstance(rejected, list):
            if not (isinstance(chosen, list) and isinstance(rejected, list)):
                raise _Drop(BAD_ROW)
            c_turns, r_turns = self._turns(chosen), self._turns(rejected)
            if prompt is None and not turns:  # TRL implicit prompt: the shared turns
                if len(c_turns) < 2 or c_turns[:-1] != r_turns[:-1]:
                    raise _Drop(BAD_ROW)
                turns, prompt = c_turns[:-1], ""
                c_turns, r_turns = c_turns[-1:], r_turns[-1:]
            if len(c_turns) != 1 or len(r_turns) != 1:
                raise _Drop(BAD_ROW)
            if c_turns[0].role != "assistant" or r_turns[0].role != "assistant":
                raise _Drop(BAD_ROW)
            chosen, rejected = c_turns[0].content, r_turns[0].content
        return self._pair(prompt, turns, chosen, rejected)

    def _turns(self, messages: Any) -> tuple[ChatTurn, ...]:
        if not isinstance(messages, list) or not messages:
            raise _Drop(BAD_ROW)
        turns = []
        for m in messages:
            if not isinstance(m, dict):
                raise _Drop(BAD_ROW)
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or role not in ROLES or not isinstance(content, str):
                raise _Drop(BAD_ROW)
            turns.append(ChatTurn(role, _string(content, BAD_ROW)))
        return tuple(turns)

    def _pair(
        self, prompt: Any, turns: tuple[ChatTurn, ...], chosen: Any, rejected: Any
    ) -> PreferenceExample:
        if turns:
            if turns[-1].role == "assistant":
                raise _Drop(BAD_ROW)  # the prompt must end before the reply
            if not any(t.content.strip() for t in turns):
                raise _Drop(EMPTY_TEXT)
            prompt = ""
        else:
            prompt = _string(prompt, EMPTY_TEXT)
            if not prompt.strip():
                raise _Drop(EMPTY_TEXT)
        chosen = _string(chosen, MISSING_LABEL)
        rejected = _string(rejected, MISSING_LABEL)
        if not chosen.strip() or not rejected.strip():
            raise _Drop(MISSING_LABEL)
        self._check_length(len(prompt) + sum(len(t.content) for t in turns) + len(chosen) + len(rejected))
        return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, messages=turns)

    def _check_length(self, chars: int) -> None:
        if chars > self.max_chars:
            raise _Drop(OVER_LENGTH)


def _string(value: Any, if_missing: str) -> str:
    """`value` as text: None -> drop `if_missing`; not a string -> bad_row; a lone surrogate
    (valid JSON, not encodable) -> bad_utf8."""
    if value is None:
        raise _Drop(if_missing)
    if not isinstance(value, str):
        raise _Drop(BAD_ROW)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Drop(BAD_UTF8) from None
    return value


def _json_object(line: bytes) -> Any:
    """The parsed line, or a _Drop to be raised when its row is built."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return _Drop(BAD_UTF8)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _Drop(BAD_ROW)


def _csv_records(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Non-blank CSV records as bytes, without their line ending. A newline inside a quoted
    cell does not end a record: lines are joined while the count of quote bytes is odd (a
    quote byte never occurs inside a UTF-8 multi-byte sequence, so this is safe on bytes
    that do not decode). A quote left open runs to the end of the file, as one record."""
    pending: list[bytes] = []
    quotes = 0
    for line in lines:
        pending.append(line)
        quotes += line.count(b'"')
        if quotes % 2:
            continue
        record = b"\n".join(pending).removesuffix(b"\r")
        pending, quotes = [], 0
        if record.strip():
            yield record
    if pending:
        record = b"\n".join(pending)
        if record.strip():
            yield record


def _csv_cells(record: str) -> list[str]:
    rows = list(csv.reader([record]))
    if len(rows) != 1:
        raise _Drop(BAD_ROW)
    return rows[0]


def _column(header: list[str], name: str, option: str, field_path: str) -> int:
    matches = [i for i, c in enumerate(header) if c == name]
    if not matches:
        matches = [i for i, c in enumerate(header) if c.casefold() == name.casefold()]
    if len(matches) > 1:
        raise InvalidRequest.field(field_path, f'the CSV header has more than one "{name}" column')
    if not matches:
        columns = ", ".join(c or '""' for c in header[:20])
        raise InvalidRequest.field(
            field_path,
            f'the CSV header has no "{name}" column (columns: {columns}); '
            f"name the column to use with {option}",
        )
    return matches[0]
