"""The AdapterStore protocol: where adapter files live, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class AdapterStore(Protocol):
    def publish(self, staged_dir: Path, namespace: str, name: str, version: int) -> int:
        """Move a fully written directory into place as namespace/name@version, atomically
        (no reader ever sees a partial version). Returns its size in bytes."""

    def open(self, namespace: str, name: str, version: int) -> Path:
        """A local directory holding that version's files; NotFound if it is missing."""

    def staging_dir(self) -> Path:
        """A fresh empty directory on the same filesystem as the store, for staging."""

    def delete(self, namespace: str, name: str, version: int) -> None: ...
