"""Adapter archives (storage/adapter_archive.py): pack is reproducible and unpack refuses
every member that is not a plain top-level file, and archives that unpack past the bound."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.storage.adapter_archive import pack, unpack


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def test_pack_then_unpack_round_trips_and_is_reproducible(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text("{}")
    (src / "b.safetensors").write_bytes(b"\0" * 100)
    one = pack(src, ["b.safetensors", "a.json"], tmp_path / "one.tar.gz")
    two = pack(src, ["a.json", "b.safetensors"], tmp_path / "two.tar.gz")
    assert one == two and one[0] == (tmp_path / "one.tar.gz").stat().st_size
    out = tmp_path / "out"
    out.mkdir()
    assert unpack(tmp_path / "one.tar.gz", out, max_bytes=1000) == ["a.json", "b.safetensors"]
    assert (out / "b.safetensors").read_bytes() == b"\0" * 100


def _symlink() -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo("link.safetensors")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info, b""


def _dir() -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo("sub")
    info.type = tarfile.DIRTYPE
    return info, b""


@pytest.mark.parametrize(
    "member, words",
    [
        (_file("../escape.json"), "'../escape.json' is not a plain file name"),
        (_file("/etc/cron.d/x"), "'/etc/cron.d/x' is not a plain file name"),
        (_file("sub/a.json"), "'sub/a.json' is not a plain file name"),
        (_file("a\\..\\b"), "is not a plain file name"),
        (_symlink(), "'link.safetensors' is a link"),
        (_dir(), "'sub' is not a regular file"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, member, words):
    archive = _tar(tmp_path / "a.tar.gz", [_file("adapter_config.json"), member])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidRequest) as err:
        unpack(archive, out, max_bytes=1000)
    assert err.value.violations[0].field == "archive" and words in err.value.violations[0].description
    assert not (tmp_path / "escape.json").exists()
    assert [p.name for p in out.iterdir()] == ["adapter_config.json"]  # only what came before


def test_duplicates_bombs_and_garbage_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dup = _tar(tmp_path / "dup.tar.gz", [_file("a.json"), _file("./a.json")])
    with pytest.raises(InvalidRequest, match="appears twice"):
        unpack(dup, out, max_bytes=1000)
    big = _tar(tmp_path / "big.tar.gz", [_file("w.safetensors", b"\0" * 5000)])  # compresses to ~50 bytes
    with pytest.raises(InvalidRequest, match="max_adapter_bytes"):
        unpack(big, tmp_path / "out", max_bytes=4096)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(InvalidRequest, match=r"not a readable \.tar\.gz"):
        unpack(tmp_path / "junk.tar.gz", out, max_bytes=1000)
