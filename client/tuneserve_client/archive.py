"""Adapter archives on the client side: pack a peft directory for ImportAdapter, unpack an
ExportAdapter stream into a directory.

An archive is a flat .tar.gz (files only, no paths): what the server writes and reads. Unpacking
here trusts the archive no more than the server does: a member that is not a plain top-level
file is refused before anything is written."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

HEAD_FILE = "head.safetensors"


def pack_directory(
    directory: str | os.PathLike[str], extra: Mapping[str, str | os.PathLike[str]] = ()
) -> bytes:
    """Every regular top-level file of `directory` (a peft save_pretrained directory), plus
    `extra` ({name in the archive: path}, e.g. {"head.safetensors": "my_head.safetensors"}),
    as .tar.gz bytes. The server decides what it accepts (and names what it refuses)."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    files = {p.name: p for p in sorted(root.iterdir()) if p.is_file()}
    files.update({name: Path(path) for name, path in dict(extra).items()})
    if not files:
        raise ValueError(f"{root} holds no files")
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, path in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return raw.getvalue()


def unpack_to(data: bytes, directory: str | os.PathLike[str]) -> list[str]:
    """Write the archive's files into `directory` (created if absent); returns their names."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            path = PurePosixPath(name)
            if not member.isreg() or len(path.parts) != 1 or name in ("", ".", "..") or "\\" in name:
                raise ValueError(f"the archive member {member.name!r} is not a plain file; refusing it")
            source = tar.extractfile(member)
            assert source is not None
            with source:
                (out / name).write_bytes(source.read())
            names.append(name)
    return names
