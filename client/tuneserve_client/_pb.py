"""Small protobuf readers shared by the client's result types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """The enum value's name without `prefix` (JOB_STATE_RUNNING -> RUNNING); a newer
    server's value this client doesn't know comes back as `prefix` + the number."""
    try:
        name = enum.Name(value)
    except ValueError:
        return f"{prefix}{value}"
    return name[len(prefix) :] if name.startswith(prefix) else name


def time_of(msg: Any, name: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when unset."""
    return getattr(msg, name).ToDatetime(tzinfo=UTC) if msg.HasField(name) else None
