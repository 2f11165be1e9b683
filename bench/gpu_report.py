"""The last step of bench/gpu.sh: one "## GPU run (bench/gpu.sh)" section of docs/benchmarks.md
from what the run left in --out: each step's exit status and time (steps.tsv) and the
sections the three benchmarks wrote into the scratch markdown file (--sections), their
headings moved one level down so they sit inside this section.

    python bench/gpu_report.py --out DIR --sections DIR/sections.md --device cuda --device-name "NVIDIA H200"
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import DOCS, code_version, log, write_docs

SECTION = "## GPU run (bench/gpu.sh)"


def steps_table(path: Path) -> tuple[str, bool]:
    """The steps' table and whether every step exited 0 (a missing file: none ran)."""
    lines = ["| step | exit status | seconds | limit (s) |", "|---|---:|---:|---:|"]
    ok = path.exists()
    for row in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, limit = row.split("\t")
        ok = ok and rc == "0"
        note = " (hit its time limit)" if rc in ("124", "137") else ""
        lines.append(f"| {name} | {rc}{note} | {seconds} | {limit} |")
    return "\n".join(lines), ok


def demoted(markdown: str) -> str:
    """The sections only (the scratch file's title and intro dropped), their headings one
    level down (## -> ###)."""
    out = []
    started = False
    for line in markdown.splitlines():
        started = started or line.startswith("## ")
        if started:
            out.append("#" + line if line.startswith("#") else line)
    return "\n".join(out).strip()


def body(args: argparse.Namespace) -> tuple[str, bool]:
    import torch

    table, ok = steps_table(args.out / "steps.tsv")
    sections = args.sections.read_text() if args.sections.exists() else ""
    # The benchmarks' own descriptions of the machine are the CPU's; this is the GPU.
    return (
        f"Measured {dt.date.today().isoformat()} on **{args.device_name}** (`--device {args.device}`), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}. "
        f"Code: {code_version()}. One run of `bench/gpu.sh`: the tests marked `gpu`, then the serving, "
        f"generation and training benchmarks with `--device {args.device}` and short settings (the CPU "
        f"sections above use the full ones; these numbers are not comparable to them one to one).\n\n"
        f"{table}\n\n"
        + (demoted(sections) if sections else "_No benchmark wrote a section (see the step logs)._")
        + "\n",
        ok,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="bench/gpu.sh's results folder (steps.tsv)")
    ap.add_argument("--sections", type=Path, required=True, help="the scratch markdown the benchmarks wrote")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--device-name", default="")
    args = ap.parse_args(argv)
    if not args.device_name:
        import torch

        args.device_name = torch.cuda.get_device_name(torch.device(args.device))
    text, ok = body(args)
    write_docs(args.docs, SECTION, text)
    log(f"wrote {SECTION!r} to {args.docs}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
