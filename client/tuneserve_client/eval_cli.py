"""`tuneserve eval create|get|list|compare|cancel`: evaluations from the command line, printed as
tables (metrics per target, the per-label table, each comparison with its p-values), with the
confusion matrices and reliability diagrams as PNG files (matplotlib: `pip install
'tuneserve[plots]'`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, TextIO

from tuneserve_client.datafiles import read_causal_examples, read_examples
from tuneserve_client.evaluations import Evaluation, TargetResult

EXIT_ERROR = 1
EXIT_USAGE = 2
SIGNIFICANCE = 0.05
CLASSIFICATION_COLUMNS = ("accuracy", "macro_f1", "nll", "ece")
CAUSAL_COLUMNS = ("eval_loss", "perplexity", "exact_match", "contains_reference")


def add_eval_commands(commands: Any) -> None:
    ev = commands.add_parser("eval", help="evaluate adapter versions on a test set and compare them")
    cmds = ev.add_subparsers(dest="eval_command", required=True, metavar="ACTION")

    def rows_arguments(p: argparse.ArgumentParser) -> None:
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--data", metavar="FILE", help="rows to evaluate on (.csv or .jsonl), sent inline"
        )
        source.add_argument("--dataset", metavar="ID", help="an uploaded dataset")
        p.add_argument("--task", default="classification", choices=("classification", "causal_lm"))
        p.add_argument("--text-field", metavar="NAME", help="text column / key (causal LM: the prompt)")
        p.add_argument("--label-field", metavar="NAME", help="label column / key (causal LM: the completion)")
        p.add_argument("--resamples", type=int, metavar="N", help="paired bootstrap resamples (default 1000)")
        p.add_argument("--seed", type=int, metavar="N", help="seed of the bootstrap draws (default 0)")
        p.add_argument("--include-base", action="store_true", help="also the bare base model (causal LM)")
        plots(p)

    def plots(p: argparse.ArgumentParser) -> None:
        p.add_argument("--confusion-png", metavar="FILE", help="write the confusion matrices as a PNG")
        p.add_argument("--reliability-png", metavar="FILE", help="write the reliability diagrams as a PNG")

    create = cmds.add_parser("create", help="queue an evaluation of VERSION... (name, name@N)")
    create.add_argument("versions", nargs="+", metavar="VERSION")
    rows_arguments(create)
    create.add_argument("--wait", action="store_true", help="show progress, then the results")
    create.set_defaults(handler=_cmd_create)

    compare = cmds.add_parser("compare", help="evaluate A and B on the same rows and compare (B - A)")
    compare.add_argument("a", metavar="A")
    compare.add_argument("b", metavar="B")
    rows_arguments(compare)
    compare.set_defaults(handler=_cmd_compare, wait=True)

    get = cmds.add_parser("get", help="show an evaluation and its results")
    get.add_argument("evaluation_id", metavar="ID")
    plots(get)
    get.set_defaults(handler=_cmd_get)

    ls = cmds.add_parser("list", help="list evaluations, newest first")
    ls.add_argument("--state", action="append", dest="states", metavar="STATE")
    ls.add_argument("--adapter", metavar="NAME")
    ls.set_defaults(handler=_cmd_list)

    cancel = cmds.add_parser("cancel", help="cancel a queued or running evaluation")
    cancel.add_argument("evaluation_id", metavar="ID")
    cancel.set_defaults(handler=_cmd_cancel)


# --- commands ----------------------------------------------------------------------------


def _check_plotting(args: argparse.Namespace) -> bool:
    if not (getattr(args, "confusion_png", None) or getattr(args, "reliability_png", None)):
        return True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "error: --confusion-png / --reliability-png need matplotlib: pip install 'tuneserve[plots]' "
            "(or pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    return True


def _rows(args: argparse.Namespace) -> list:
    if not args.data:
        return []
    if args.task == "causal_lm":
        return read_causal_examples(
            args.data,
            prompt_field=args.text_field or "prompt",
            completion_field=args.label_field or "completion",
        )
    return read_examples(
        args.data, text_field=args.text_field or "text", label_field=args.label_field or "label"
    )


def _create(client: Any, args: argparse.Namespace, versions: list[str]) -> Evaluation:
    return client.create_evaluation(
        versions,
        _rows(args),
        dataset=args.dataset,
        include_base=args.include_base,
        bootstrap_resamples=args.resamples,
        seed=args.seed,
    )


def _cmd_create(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    if not _check_plotting(args):
        return EXIT_USAGE
    ev = _create(client, args, args.versions)
    if not args.wait:
        _emit(out, args, ev, f"{ev.id} {ev.state} ({', '.join(ev.targets)} on {ev.rows} rows)")
        return 0
    return _finish(client, ev, args, out)


def _cmd_compare(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    if not _check_plotting(args):
        return EXIT_USAGE
    return _finish(client, _create(client, args, [args.a, args.b]), args, out)


def _cmd_get(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    if not _check_plotting(args):
        return EXIT_USAGE
    ev = client.get_evaluation(args.evaluation_id)
    _emit(out, args, ev, describe(ev))
    _plots(ev, args, out)
    return 0


def _cmd_list(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    evs = list(client.list_evaluations(states=args.states, adapter=args.adapter))
    rows = [
        [
            e.id,
            e.state,
            ", ".join(e.targets),
            str(e.rows),
            e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "-",
        ]
        for e in evs
    ]
    _emit(out, args, evs, table(["ID", "STATE", "TARGETS", "ROWS", "CREATED"], rows))
    return 0


def _cmd_cancel(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    ev = client.cancel_evaluation(args.evaluation_id)
    _emit(out, args, ev, f"{ev.id} {ev.state}" + (" (cancel requested)" if not ev.done else ""))
    return 0


def _finish(client: Any, ev: Evaluation, args: argparse.Namespace, out: TextIO) -> int:
    """Progress on stderr while it runs, then the results (exit 1 unless SUCCEEDED)."""
    live = sys.stderr.isatty()
    if not args.json:
        print(ev.id, file=out, flush=True)

    def progress(e: Evaluation) -> None:
        if args.json:
            return
        rate = f", {e.rows_per_second_now:.0f} rows/s" if e.rows_per_second_now else ""
        line = f"{e.state} {e.step}/{e.total_steps or '?'}{rate}"
        print(
            ("\r" + line.ljust(60)) if live else line, end="" if live else "\n", file=sys.stderr, flush=True
        )

    ev = client.wait_evaluation(ev, on_update=progress)
    if live and not args.json:
        print(file=sys.stderr)
    _emit(out, args, ev, describe(ev))
    _plots(ev, args, out)
    return 0 if ev.state == "SUCCEEDED" else EXIT_ERROR


# --- text --------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]
    )


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.4f}"


def describe(ev: Evaluation) -> str:
    head = f"evaluation {ev.id}  {ev.state}  {ev.task}  {ev.rows} rows  targets: {', '.join(ev.targets)}"
    if ev.dataset_id:
        head += f"  dataset {ev.dataset_id}"
    lines = [head]
    if ev.state == "SUCCEEDED":
        lines[0] += f"  ({ev.seconds:.1f} s, {ev.rows_per_second:.0f} rows/s)"
    elif ev.total_steps:
        lines.append(f"progress: {ev.step}/{ev.total_steps}")
    if ev.error:
        lines.append(f"error: {ev.error}")
    if not ev.results:
        return "\n".join(lines)
    columns = CAUSAL_COLUMNS if ev.task == "causal_lm" else CLASSIFICATION_COLUMNS
    lines += [
        "",
        table(
            ["TARGET", *(c.upper() for c in columns)],
            [[r.target, *(_num(r.metrics.get(c)) for c in columns)] for r in ev.results],
        ),
    ]
    unseen = [r for r in ev.results if r.metrics.get("rows_with_unseen_label")]
    for r in unseen:
        lines.append(
            f"note: {int(r.metrics['rows_with_unseen_label'])} rows have a label {r.target} was not trained on "
            "(wrong for accuracy, left out of nll)"
        )
    if any(r.per_label for r in ev.results):
        lines += ["", "per label:", per_label_table(ev.results)]
    for r in ev.results:
        for s in r.samples:
            lines.append(
                f"[{r.target}] prompt: {s.prompt!r}\n    reference: {s.reference!r}\n    generated: {s.generated!r}"
            )
    for c in ev.comparisons:
        lines += ["", f"comparison: {c.b} vs {c.a} on the same {c.rows} rows (differences are {c.b} - {c.a})"]
        m = c.mcnemar
        rows = [
            [
                m.metric,
                _num(m.a),
                _num(m.b),
                _signed(m.difference),
                "-",
                _p(m.p_value),
                f"McNemar, {m.method} (only {c.a} right: {m.only_a_correct}, only {c.b} right: {m.only_b_correct})",
            ]
        ]
        for b in c.bootstrap:
            rows.append(
                [
                    b.metric,
                    _num(b.a),
                    _num(b.b),
                    _signed(b.difference),
                    f"[{_signed(b.ci_low)}, {_signed(b.ci_high)}]",
                    _p(b.p_value),
                    f"paired bootstrap, {b.resamples} resamples, seed {b.seed}",
                ]
            )
        lines.append(table(["METRIC", c.a.upper(), c.b.upper(), "DIFF", "95% CI", "P", "TEST"], rows))
        lines.append(verdict(c))
    return "\n".join(lines)


def verdict(c: Any) -> str:
    m = c.mcnemar
    if m.p_value < SIGNIFICANCE and m.difference != 0:
        better, worse = (c.b, c.a) if m.difference > 0 else (c.a, c.b)
        return (
            f"=> {better} is better than {worse} on {m.metric} (McNemar p = {_p(m.p_value)} < {SIGNIFICANCE})"
        )
    return f"=> no significant difference in {m.metric} at {SIGNIFICANCE} (McNemar p = {_p(m.p_value)})"


def per_label_table(results: tuple[TargetResult, ...]) -> str:
    labels = sorted({s.label for r in results for s in r.per_label})
    by = {(r.target, s.label): s for r in results for s in r.per_label}
    header = ["LABEL", "SUPPORT"]
    for r in results:
        header += [f"{r.target} P", "R", "F1"]
    rows = []
    for label in labels:
        support = next((by[(r.target, label)].support for r in results if (r.target, label) in by), 0)
        row = [label, str(support)]
        for r in results:
            s = by.get((r.target, label))
            row += [_num(s.precision, 3), _num(s.recall, 3), _num(s.f1, 3)] if s else ["-", "-", "-"]
        rows.append(row)
    return table(header, rows)


def _emit(out: TextIO, args: argparse.Namespace, value: Any, text: str) -> None:
    if args.json:
        data = (
            [dataclasses.asdict(v) for v in value] if isinstance(value, list) else dataclasses.asdict(value)
        )
        print(json.dumps(data, default=str), file=out)
    else:
        print(text, file=out)


# --- pictures ----------------------------------------------------------------------------


def _plots(ev: Evaluation, args: argparse.Namespace, out: TextIO) -> None:
    with_labels = [r for r in ev.results if r.labels]
    if getattr(args, "confusion_png", None):
        if with_labels:
            write_confusion_png(with_labels, args.confusion_png)
            print(f"wrote {args.confusion_png}", file=sys.stderr)
        else:
            print(
                "no confusion matrix to draw (not a classification evaluation, or not finished)",
                file=sys.stderr,
            )
    if getattr(args, "reliability_png", None):
        if any(r.reliability for r in ev.results):
            write_reliability_png(list(ev.results), args.reliability_png)
            print(f"wrote {args.reliability_png}", file=sys.stderr)
        else:
            print(
                "no reliability diagram to draw (not a classification evaluation, or not finished)",
                file=sys.stderr,
            )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_confusion_png(results: list[TargetResult], path: str) -> None:
    """One panel per target: rows gold labels, columns predictions, counts as colour."""
    plt = _pyplot()
    n = len(results[0].labels)
    size = max(4.0, min(0.18 * n + 2, 18.0))
    fig, axes = plt.subplots(1, len(results), figsize=(size * len(results), size), squeeze=False)
    for ax, r in zip(axes[0], results):
        im = ax.imshow(r.confusion, cmap="Blues")
        ax.set_title(r.target)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ticks = range(len(r.labels))
        font = 8 if len(r.labels) <= 20 else 4
        ax.set_xticks(list(ticks), r.labels, rotation=90, fontsize=font)
        ax.set_yticks(list(ticks), r.labels, fontsize=font)
        if len(r.labels) <= 12:
            for i, row in enumerate(r.confusion):
                for j, c in enumerate(row):
                    ax.text(j, i, str(c), ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reliability_png(results: list[TargetResult], path: str) -> None:
    """Accuracy against mean confidence per bin, one line per target, and the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for r in results:
        bins = [b for b in r.reliability if b.count]
        ece = r.metrics.get("ece")
        label = r.target + (f" (ECE {ece:.3f})" if ece is not None else "")
        ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], marker="o", label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
