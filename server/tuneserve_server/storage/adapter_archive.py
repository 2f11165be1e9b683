"""Adapter archives: one version's files as a flat gzip-compressed tar (ExportAdapter writes
one, ImportAdapter reads one).

Unpacking trusts nothing in the archive: every member must be a regular file at the top level
(no directories, links, devices, absolute paths, `..` or backslashes), named once, and the
bytes unpacked stay within `max_bytes` (a small archive cannot unpack into a huge one). A
member that breaks a rule refuses the whole archive with INVALID_ARGUMENT naming it, before
its bytes are written anywhere."""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tuneserve_server.domain.errors import InvalidRequest

_CHUNK = 1 << 20
FIELD = "archive"


def pack(directory: Path, names: Iterable[str], out: Path) -> tuple[int, str]:
    """Write `names` (files of `directory`) into `out` as a .tar.gz, reproducibly (no
    owners, times or modes of this machine). Returns (size in bytes, sha256 hex)."""
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name in sorted(names):
            path = directory / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    digest = hashlib.sha256()
    size = 0
    with open(out, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _member_name(member: tarfile.TarInfo) -> str:
    """The member's file name; InvalidRequest for anything but a plain top-level file."""
    raw = member.name
    name = raw[2:] if raw.startswith("./") else raw
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or "\x00" in name
        or len(path.parts) != 1
    ):
        raise InvalidRequest.field(
            FIELD, f"member {raw!r} is not a plain file name: an adapter archive is flat (no paths, no '..')"
        )
    if not member.isreg():
        kind = "a link" if member.issym() or member.islnk() else "not a regular file"
        raise InvalidRequest.field(FIELD, f"member {raw!r} is {kind}; an adapter archive holds only files")
    return name


def unpack(archive: Path, dest: Path, *, max_bytes: int) -> list[str]:
    """Unpack a .tar.gz into the empty directory `dest`; returns the file names, in archive
    order. InvalidRequest (field `archive`) for an unreadable archive, an unsafe member, a
    name given twice, or more than `max_bytes` unpacked."""
    names: list[str] = []
    total = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                if member.isdir() and member.name in (".", "./"):
                    continue
                name = _member_name(member)
                if name in names:
                    raise InvalidRequest.field(FIELD, f"member {name!r} appears twice")
                total += member.size
                if total > max_bytes:
                    raise InvalidRequest.field(
                        FIELD, f"unpacks to more than {max_bytes} bytes (the server's max_adapter_bytes)"
                    )
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, open(dest / name, "xb") as out:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
                names.append(name)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as exc:
        raise InvalidRequest.field(FIELD, f"is not a readable .tar.gz ({type(exc).__name__})") from None
    return names
