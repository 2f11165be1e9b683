"""Tenant namespaces and user-facing adapter names (kept apart from the engine's internal LoRA-bank rows)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneserve_server.domain.errors import InvalidRequest

DEFAULT_NAMESPACE = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def is_valid_name(value: str) -> bool:
    return bool(_NAME.match(value))


def check_name(value: str, field: str) -> str:
    if not is_valid_name(value):
        raise InvalidRequest.field(
            field,
            f"{value!r} is not a valid name: use 1-63 of a-z 0-9 . _ -, starting with a letter or digit",
        )
    return value


def namespace_of(value: str, field: str = "namespace") -> str:
    return check_name(value, field) if value else DEFAULT_NAMESPACE


@dataclass(frozen=True, order=True)
class AdapterRef:
    """`name` or `name@version` within a namespace; version None means the latest."""

    namespace: str
    name: str
    version: int | None = None

    @classmethod
    def parse(cls, namespace: str, text: str, field: str = "adapter") -> AdapterRef:
        name, sep, version = text.partition("@")
        check_name(name, field)
        if not sep:
            return cls(namespace, name)
        # ASCII digits only ('²' passes str.isdigit but not int()), and within a 64-bit
        # integer so that the stores can look it up: otherwise a caller error, not INTERNAL.
        if not (version.isascii() and version.isdigit()) or len(version) > 18 or int(version) < 1:
            raise InvalidRequest.field(field, f"version in {text!r} must be a positive integer")
        return cls(namespace, name, int(version))

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return base if self.version is None else f"{base}@{self.version}"
