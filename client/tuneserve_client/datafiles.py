"""Reading labelled examples from .csv and .jsonl files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

TEXT, LABEL = "text", "label"


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
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataFileError(path, f"unsupported file type {suffix or '(none)'!r}: use .csv or .jsonl")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            fields = (text_field, label_field)
            examples = _read_csv(path, f, fields) if suffix == ".csv" else _read_jsonl(path, f, fields)
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


def _read_jsonl(path, f, fields: tuple[str, str]) -> list[tuple[str, str]]:
    examples = []
    for number, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataFileError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
        if not isinstance(obj, dict):
            raise DataFileError(path, f"expected a JSON object, got {type(obj).__name__}", number)
        examples.append(_check(path, number, obj.get(fields[0]), obj.get(fields[1]), fields))
    return examples
