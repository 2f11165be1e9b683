"""`tuneserve feedback submit|list|export|settings`: the FeedbackService from the shell."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from tuneserve_client.feedback import EXPORT_KINDS


def add_feedback_commands(commands: Any) -> None:
    fb = commands.add_parser("feedback", help="answer predictions, list and export feedback")
    cmds = fb.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    submit = cmds.add_parser("submit", help="feedback on one prediction (its id from predict)")
    submit.add_argument("prediction_id")
    what = submit.add_mutually_exclusive_group()
    what.add_argument("--label", default="", help="classification: the right label")
    what.add_argument("--correct", action="store_true", help="classification: the served label was right")
    submit.add_argument("--rating", type=int, default=None, help="1 (bad) .. 5 (good)")
    submit.add_argument("--corrected-text", default="", help="generation: what it should have written")
    submit.add_argument(
        "--input", default="", help="the input sent to predict (adapters that do not store inputs)"
    )
    submit.add_argument("--served-text", default="", help="generation: the served text (when not stored)")
    submit.add_argument("--comment", default="")
    submit.set_defaults(handler=_cmd_submit)
    lst = cmds.add_parser("list", help="feedback, newest first")
    lst.add_argument("adapter", nargs="?", default="", help="NAME or NAME@VERSION (default: all)")
    lst.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    lst.set_defaults(handler=_cmd_list)
    export = cmds.add_parser(
        "export", help="an adapter's feedback as a dataset (prints its id and report) or preference pairs"
    )
    export.add_argument("adapter", help="NAME or NAME@VERSION")
    export.add_argument("--kind", choices=sorted(EXPORT_KINDS), default="auto")
    export.add_argument("--name", default="", help="the dataset's display name")
    export.add_argument(
        "--output", "-o", type=Path, default=None, help="preference_pairs: write the JSONL here"
    )
    export.set_defaults(handler=_cmd_export)
    settings = cmds.add_parser(
        "settings", help="show or change whether an adapter's served inputs are stored"
    )
    settings.add_argument("adapter_name")
    on_off = settings.add_mutually_exclusive_group()
    on_off.add_argument("--store-inputs", dest="store_inputs", action="store_true", default=None)
    on_off.add_argument("--no-store-inputs", dest="store_inputs", action="store_false")
    settings.set_defaults(handler=_cmd_settings)


def _cmd_submit(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tuneserve_client.cli import _emit

    f = client.submit_feedback(
        args.prediction_id,
        label=args.label,
        correct=args.correct,
        rating=args.rating,
        corrected_text=args.corrected_text,
        input=args.input,
        served_text=args.served_text,
        comment=args.comment,
    )
    verdict = ("correct" if f.correct else f"wrong (right: {f.label})") if f.label else "recorded"
    _emit(
        out,
        args,
        f,
        f"{f.id}: {f.adapter_name}@{f.adapter_version} served {f.served_label or 'text'!s}: {verdict}",
    )
    return 0


def _cmd_list(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tuneserve_client.cli import _emit, _time

    rows = []
    for i, f in enumerate(client.list_feedback(args.adapter)):
        if i >= args.limit:
            break
        rows.append(f)
    lines = [f"{'CREATED':20}  {'ADAPTER':24}  {'SERVED':20}  {'FEEDBACK':20}  RATING"]
    for f in rows:
        given = f.label if f.label else ("corrected" if f.corrected_text else "-")
        lines.append(
            f"{_time(f.created_at):20}  {f.adapter_name + '@' + str(f.adapter_version):24}  "
            f"{(f.served_label or '(text)')[:20]:20}  {given[:20]:20}  {f.rating if f.rating is not None else '-'}"
        )
    _emit(out, args, rows, "\n".join(lines))
    return 0


def _cmd_export(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    from dataclasses import replace

    from tuneserve_client.cli import _describe_report, _emit, _jsonable

    result = client.export_feedback(args.adapter, kind=args.kind, display_name=args.name)
    lines = [f"rows:        {result.rows} ({result.skipped} feedback rows left out)"]
    if result.dataset is not None:
        lines.insert(0, f"dataset:     {result.dataset.id}")
        if result.dataset.report:
            lines.append(_describe_report(result.dataset.report))
    if result.conflicts_with_training:
        lines.append(
            f"conflicts:   {result.conflicts_with_training} feedback labels differ from the training label"
        )
        lines += [
            f"  v{c.adapter_version} {c.text[:50]!r}: feedback {c.feedback_label}, training {c.training_label}"
            for c in result.conflicts
        ]
    if result.jsonl:
        if args.output is not None:
            args.output.write_bytes(result.jsonl)
            lines.append(f"written:     {args.output}")
        else:
            lines.append(result.jsonl.decode().rstrip("\n"))
    payload = dict(_jsonable(replace(result, jsonl=b"")), jsonl=result.jsonl.decode())
    _emit(out, args, payload, "\n".join(lines))
    return 0


def _cmd_settings(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    from tuneserve_client.cli import _emit, _time

    if args.store_inputs is None:
        s = client.feedback_settings(args.adapter_name)
    else:
        s = client.set_feedback_settings(args.adapter_name, store_inputs=args.store_inputs)
    _emit(
        out,
        args,
        s,
        f"{s.adapter_name}: store_inputs={'on' if s.store_inputs else 'off'} (changed {_time(s.update_time)})",
    )
    return 0
