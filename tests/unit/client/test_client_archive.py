"""The client's adapter archives (tuneserve_client/archive.py) and the export/import CLI's
arguments: a peft directory packs flat (plus the head it is given), an archive unpacks only
plain files."""

from __future__ import annotations

import io
import tarfile

import pytest

from tuneserve_client.archive import pack_directory, unpack_to
from tuneserve_client.cli import build_parser


def test_pack_directory_sends_top_level_files_and_the_head(tmp_path):
    peft_dir = tmp_path / "adapter"
    (peft_dir / "nested").mkdir(parents=True)
    (peft_dir / "adapter_config.json").write_text("{}")
    (peft_dir / "adapter_model.safetensors").write_bytes(b"w")
    (peft_dir / "nested" / "ignored.txt").write_text("x")
    (tmp_path / "h.safetensors").write_bytes(b"h")
    data = pack_directory(peft_dir, {"head.safetensors": tmp_path / "h.safetensors"})
    assert data == pack_directory(peft_dir, {"head.safetensors": tmp_path / "h.safetensors"})  # reproducible
    out = tmp_path / "out"
    assert sorted(unpack_to(data, out)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
    ]
    assert (out / "head.safetensors").read_bytes() == b"h"
    with pytest.raises(ValueError, match="not a directory"):
        pack_directory(tmp_path / "missing")


def test_unpack_refuses_paths(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="not a plain file"):
        unpack_to(raw.getvalue(), tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_export_and_import_arguments():
    args = build_parser().parse_args(["adapters", "export", "intents@2", "-o", "out"])
    assert (args.adapter, args.output) == ("intents@2", "out")
    args = build_parser().parse_args(
        ["adapters", "import", "dir", "--name", "n", "--labels", "a", "b", "--head", "h.safetensors"]
    )
    assert (args.source, args.name, args.labels, args.head, args.temperature) == (
        "dir",
        "n",
        ["a", "b"],
        "h.safetensors",
        None,
    )
