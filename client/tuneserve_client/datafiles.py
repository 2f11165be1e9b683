"""Reading training examples from .csv and .jsonl files: labelled texts (classification),
prompt / completion pairs or conversations (causal LM) and preference pairs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

TEXT, LABEL = "text", "label"
PROMPT, COMPLETION = "prompt", "completion"
ROLES = ("system", "user", "assistant")


class DataFileError(ValueError):
    """A data file can't be read; `line` is 1-based, None when the whole file is at fault."""

    def __init__(self, path: str | os.PathLike[str], message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


def read_examples(
    path: str | os.PathLike[str], *, text_field: str = TEXT, label_field: str = LABEL
) -> list[tuple[str, str]]:
    """(text, label) pairs from a .csv (header naming both columns) or .jsonl file (objects
    with both keys). The column/key names default to `text` and `label`."""
    return _read(path, (text_field, label_field), chat=False)


def read_causal_examples(
    path: str | os.PathLike[str], *, prompt_field: str = PROMPT, completion_field: str = COMPLETION
) -> list[dict[str, Any]]:
    """Causal-LM examples as `Client.train` takes them: {"prompt", "completion"} dicts from a
    .csv (header naming both columns) or .jsonl file; in JSONL an object with a `messages`
    list of {"role", "content"} turns is a conversation ({"messages": [...]}), whose last
    turn is the assistant reply to learn."""
    rows = _read(path, (prompt_field, completion_field), chat=True)
    return [row if isinstance(row, dict) else {"prompt": row[0], "completion": row[1]} for row in rows]


def read_preference_examples(
    path: str | os.PathLike[str], *, prompt_field: str = PROMPT
) -> list[dict[str, Any]]:
    """Preference pairs as `Client.train` takes them: {"prompt", "chosen", "rejected"} dicts
    (or {"messages": [prompt turns], "chosen", "rejected"}) from a .csv with prompt, chosen and
    rejected columns or a .jsonl file. JSONL also takes TRL's conversational layouts: "prompt"
    as a list of turns with "chosen"/"rejected" as one-assistant-turn lists, or no prompt and
    "chosen"/"rejected" as whole conversations that share every turn but the last."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        rows = _read(path, (prompt_field, "chosen"), chat=False)  # checks the header and cells
        with open(path, encoding="utf-8-sig", newline="") as f:
            records = [r for r in csv.DictReader(f) if any((v or "").strip() for v in r.values())]
        out = []
        for line, (row, record) in enumerate(zip(rows, records, strict=True), start=2):
            rejected = record.get("rejected")
            if not isinstance(rejected, str) or not rejected.strip():
                raise DataFileError(path, "missing or empty 'rejected'", line)
            out.append({"prompt": row[0], "chosen": row[1], "rejected": rejected})
        return out
    if suffix != ".jsonl":
        raise DataFileError(path, f"unsupported file type {suffix or '(none)'!r}: use .csv or .jsonl")
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    out.append(_preference_row(path, number, raw, prompt_field))
    except OSError as exc:
        raise DataFileError(path, exc.strerror or str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not out:
        raise DataFileError(path, "no examples")
    return out


def _preference_row(path, number: int, raw: str, prompt_field: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFileError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
    if not isinstance(obj, dict):
        raise DataFileError(path, f"expected a JSON object, got {type(obj).__name__}", number)
    chosen, rejected, prompt = obj.get("chosen"), obj.get("rejected"), obj.get(prompt_field)
    turns = obj.get("messages") if prompt is None else prompt if isinstance(prompt, list) else None
    if isinstance(chosen, list) and isinstance(rejected, list):
        if prompt is None and turns is None:  # TRL implicit prompt: the shared turns
            if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
                raise DataFileError(
                    path, "'chosen' and 'rejected' must share every turn but the last", number
                )
            turns, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        if len(chosen) != 1 or len(rejected) != 1:
            raise DataFileError(path, "'chosen' and 'rejected' must each be one assistant turn", number)
        chosen, rejected = (_messages(path, number, x)[0]["content"] for x in (chosen, rejected))
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str) or not value.strip():
            raise DataFileError(path, f"missing or empty {name!r}", number)
    if turns is not None:
        if not isinstance(turns, list) or not turns:
            raise DataFileError(path, "the prompt turns must be a non-empty list", number)
        return {"messages": [dict(m) for m in turns], "chosen": chosen, "rejected": rejected}
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataFileError(path, f"missing or empty {prompt_field!r}", number)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _read(path: str | os.PathLike[str], fields: tuple[str, str], chat: bool) -> list[Any]:
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataFileError(path, f"unsupported file type {suffix or '(none)'!r}: use .csv or .jsonl")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            examples = _read_csv(path, f, fields) if suffix == ".csv" else _read_jsonl(path, f, fields, chat)
    except OSError as exc:
        raise DataFileError(path, exc.strerror or str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataFileError(path, f"malformed CSV: {exc}") from exc
    if not examples:
        raise DataFileError(path, "no examples")
    return examples


def _check(path, line: int, text: object, label: object, fields: tuple[str, str]) -> tuple[str, str]:
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    for name, value in zip(fields, (text, label)):
        if value is None:
            raise DataFileError(path, f"missing {name!r}", line)
        if not isinstance(value, str):
            raise DataFileError(path, f"{name!r} must be a string, got {type(value).__name__}", line)
        if not value.strip():
            raise DataFileError(path, f"empty {name!r}", line)
    return text, label  # type: ignore[return-value]


def _read_csv(path, f, fields: tuple[str, str]) -> list[tuple[str, str]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        return []
    columns = [name.strip() for name in header]
    missing = [name for name in fields if name not in columns]
    if missing:
        found = ", ".join(repr(c) for c in columns)
        raise DataFileError(
            path, f"header lacks column {' and '.join(map(repr, missing))} (found {found})", 1
        )
    text_at, label_at = columns.index(fields[0]), columns.index(fields[1])
    examples = []
    line = reader.line_num + 1  # first physical line of the next record
    for row in reader:
        if row:  # blank lines are skipped
            text = row[text_at] if text_at < len(row) else None
            label = row[label_at] if label_at < len(row) else None
            examples.append(_check(path, line, text, label, fields))
        line = reader.line_num + 1
    return examples


def _read_jsonl(path, f, fields: tuple[str, str], chat: bool = False) -> list[Any]:
    examples: list[Any] = []
    for number, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataFileError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
        if not isinstance(obj, dict):
            raise DataFileError(path, f"expected a JSON object, got {type(obj).__name__}", number)
        if chat and "messages" in obj:
            examples.append({"messages": _messages(path, number, obj["messages"])})
        else:
            examples.append(_check(path, number, obj.get(fields[0]), obj.get(fields[1]), fields))
    return examples


def _messages(path, line: int, messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataFileError(
            path, '\'messages\' must be a non-empty list of {"role", "content"} objects', line
        )
    turns = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataFileError(
                path, f"messages[{i}] must be an object with string 'role' and 'content'", line
            )
        if m["role"] not in ROLES:
            raise DataFileError(path, f"messages[{i}]: role must be one of {', '.join(ROLES)}", line)
        turns.append({"role": m["role"], "content": m["content"]})
    if turns[-1]["role"] != "assistant":
        raise DataFileError(path, "the last message must be the assistant reply to learn", line)
    return turns
