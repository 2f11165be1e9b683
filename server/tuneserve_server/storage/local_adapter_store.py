"""AdapterStore on a local (or shared, ReadWriteMany) directory.

Layout: root/<namespace>/<name>/<version>/ with the adapter's files. A version is staged
under root/.staging/, every file fsynced, then renamed into place: rename is atomic on one
filesystem, so a reader sees either no version or the whole of it. Each version carries
MANIFEST.json (storage/manifest.py), written at publish and checked on every open: on a
shared (ReadWriteMany) volume that catches a file damaged or changed after publish before a
replica loads it."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from tuneserve_server.domain.errors import NotFound
from tuneserve_server.storage.manifest import payload_size, verify_directory, write_manifest


def _fsync_tree(path: Path) -> int:
    size = 0
    for item in sorted(path.rglob("*")):
        if item.is_file():
            size += item.stat().st_size
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)
    return size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalAdapterStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._staging = self.root / ".staging"
        self._staging.mkdir(parents=True, exist_ok=True)

    def _path(self, namespace: str, name: str, version: int) -> Path:
        return self.root / namespace / name / str(version)

    def staging_dir(self) -> Path:
        path = self._staging / uuid.uuid4().hex
        path.mkdir()
        return path

    def publish(self, staged_dir: Path, namespace: str, name: str, version: int) -> int:
        final = self._path(namespace, name, version)
        if final.exists():
            raise FileExistsError(f"adapter version {final} already published")
        files, _ = write_manifest(staged_dir)
        _fsync_tree(staged_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            # rename(2) replaces an existing *empty* directory, so the check above is not
            # enough against a racing publisher; a non-empty one (every published version
            # has its manifest) makes the rename fail instead.
            os.rename(staged_dir, final)
        except OSError as exc:
            if final.exists():
                raise FileExistsError(f"adapter version {final} already published") from exc
            raise
        _fsync_dir(final.parent)
        return payload_size(files)

    def open(self, namespace: str, name: str, version: int) -> Path:
        path = self._path(namespace, name, version)
        if not path.is_dir():
            raise NotFound(f"adapter files for {namespace}/{name}@{version} are missing")
        verify_directory(path, f"{namespace}/{name}@{version}")
        return path

    def delete(self, namespace: str, name: str, version: int) -> None:
        path = self._path(namespace, name, version)
        if path.is_dir():
            # Rename first so a concurrent reader never sees a half-deleted directory.
            doomed = self._staging / f"deleted-{uuid.uuid4().hex}"
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
