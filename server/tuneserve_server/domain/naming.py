"""Tenant namespaces and user-facing adapter names (kept apart from the engine's internal LoRA-bank rows)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneserve_server.domain.errors import InvalidRequest

DEFAULT_NAMESPACE = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Aliases start with a letter, so `name@3` (a version) and `name@prod` (an alias) never clash.
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_ALIAS = "default"  # what the bare name means
# Reserved, never stored: always the newest version (what the bare name meant before aliases).
LATEST_ALIAS = "latest"


def is_valid_name(value: str) -> bool:
    return bool(_NAME.match(value))


def check_name(value: str, field: str) -> str:
    if not is_valid_name(value):
        raise InvalidRequest.field(
            field,
            f"{value!r} is not a valid name: use 1-63 of a-z 0-9 . _ -, starting with a letter or digit",
        )
    return value


def check_alias(value: str, field: str, *, settable: bool = False) -> str:
    """An alias name: 1-32 of a-z 0-9 _ -, starting with a letter. `settable`: also refuse the
    reserved `latest` (it always means the newest version and cannot be moved)."""
    if not _ALIAS.match(value):
        raise InvalidRequest.field(
            field,
            f"{value!r} is not a valid alias: use 1-32 of a-z 0-9 _ -, starting with a letter",
        )
    if settable and value == LATEST_ALIAS:
        raise InvalidRequest.field(field, "'latest' is reserved: it always means the newest version")
    return value


def namespace_of(value: str, field: str = "namespace") -> str:
    return check_name(value, field) if value else DEFAULT_NAMESPACE


@dataclass(frozen=True, order=True)
class AdapterRef:
    """`name`, `name@version` or `name@alias` within a namespace. Neither version nor alias:
    the alias `default` (services/aliases.py); `latest` is the newest version."""

    namespace: str
    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def bare(self) -> bool:
        """The bare name: follows `default` (a pin on it follows the alias)."""
        return self.version is None and self.alias is None

    @classmethod
    def parse(cls, namespace: str, text: str, field: str = "adapter") -> AdapterRef:
        name, sep, version = text.partition("@")
        check_name(name, field)
        if not sep:
            return cls(namespace, name)
        if version[:1].isalpha():
            return cls(namespace, name, alias=check_alias(version, field))
        # ASCII digits only ('²' passes str.isdigit but not int()), and within a 64-bit
        # integer so that the stores can look it up: otherwise a caller error, not INTERNAL.
        if not (version.isascii() and version.isdigit()) or len(version) > 18 or int(version) < 1:
            raise InvalidRequest.field(
                field, f"version in {text!r} must be a positive integer (or an alias starting with a letter)"
            )
        return cls(namespace, name, int(version))

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        if self.alias is not None:
            return f"{base}@{self.alias}"
        return base if self.version is None else f"{base}@{self.version}"
