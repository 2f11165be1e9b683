"""The checksum manifest every adapter version carries, shared by all AdapterStores.

At publish a store writes MANIFEST.json into the version: {"format": 1, "files":
{relative/posix/path: {"sha256": hex, "size": bytes}}} for every other file of the version.
On open it checks the directory against it before anything loads from it: every listed
file present with its size and sha256, no file that is not listed. On an object store the
manifest is also the commit marker: it is written last, so a version exists only once its
manifest does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from tuneserve_server.domain.errors import CorruptAdapter

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20

Manifest = dict[str, dict[str, object]]  # relative path -> {"sha256": str, "size": int}


def sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _files(directory: Path) -> dict[str, Path]:
    """Every regular file under `directory` but the manifest, by relative posix path."""
    return {
        p.relative_to(directory).as_posix(): p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST_NAME
    }


def build_manifest(directory: Path) -> Manifest:
    out: Manifest = {}
    for rel, path in _files(directory).items():
        sha, size = sha256_file(path)
        out[rel] = {"sha256": sha, "size": size}
    return out


def manifest_bytes(files: Manifest) -> bytes:
    return json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=2, sort_keys=True).encode()


def payload_size(files: Manifest) -> int:
    return sum(int(entry["size"]) for entry in files.values())


def write_manifest(directory: Path) -> tuple[Manifest, bytes]:
    """Checksum every file of a staged version and write MANIFEST.json next to them."""
    files = build_manifest(directory)
    raw = manifest_bytes(files)
    (directory / MANIFEST_NAME).write_bytes(raw)
    return files, raw


def _safe_relpath(rel: str) -> bool:
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and "\\" not in rel


def parse_manifest(raw: bytes, what: str) -> Manifest:
    """The files of a manifest; CorruptAdapter if it is not one this code wrote."""
    try:
        data = json.loads(raw)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        files = data["files"]
        for rel, entry in files.items():
            if not _safe_relpath(rel) or rel == MANIFEST_NAME:
                raise ValueError(f"bad path {rel!r}")
            if not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("size"), int):
                raise ValueError(f"bad entry for {rel!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptAdapter(f"adapter {what} is corrupt: {MANIFEST_NAME} is unreadable ({exc})") from None
    return files


def verify_directory(directory: Path, what: str) -> Manifest:
    """Check `directory` against its MANIFEST.json. `what` names the version in errors (e.g.
    'team-a/intents@3'); messages name files relative to the version, never local paths."""
    try:
        raw = (directory / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise CorruptAdapter(f"adapter {what} is corrupt: it has no {MANIFEST_NAME}") from None
    files = parse_manifest(raw, what)
    present = _files(directory)
    for rel, entry in files.items():
        path = present.pop(rel, None)
        if path is None:
            raise CorruptAdapter(f"adapter {what} is corrupt: file {rel} is missing")
        if path.stat().st_size != entry["size"]:
            raise CorruptAdapter(
                f"adapter {what} is corrupt: file {rel} has {path.stat().st_size} bytes, "
                f"the manifest says {entry['size']}"
            )
        if sha256_file(path)[0] != entry["sha256"]:
            raise CorruptAdapter(f"adapter {what} is corrupt: file {rel} does not match its sha256")
    if present:
        raise CorruptAdapter(
            f"adapter {what} is corrupt: file {sorted(present)[0]} is not in its {MANIFEST_NAME}"
        )
    return files
