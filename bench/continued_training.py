"""Continued training (issue 13 item 3): does a version continued from v1 on new data reach
the accuracy of a version trained from scratch on all the data in fewer steps?

Banking77, the first --labels labels, --per-label rows each, split in half: slice A (the first
half of each label's rows) and slice B (the rest). v1 = from scratch on A. The reference =
from scratch on A+B; its final test accuracy is the target. Then, evaluated on the test rows
of those labels every --eval-every optimiser steps: continued from v1 on B, and from scratch
on A+B (the baseline in the same run). Reported: the first step at which each reaches the
target, and the steps each ran. MiniLM, the real recipe in-process (no server), float32.

    .venv/bin/python bench/continued_training.py [--labels 10 --per-label 40 --epochs 3]"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import DOCS, command_as_run, cpu_model, log, read_csv, training_subset, write_docs

from tuneserve_server.domain.jobs import (
    EvaluationSettings,
    EventType,
    Hyperparameters,
    JobSpec,
    LabelledText,
    LoraSettings,
    OptimizerSettings,
    TaskType,
)
from tuneserve_server.modeling import resolve_base_model
from tuneserve_server.training.classification import ClassificationRecipe
from tuneserve_server.training.recipe import RecipeContext, run_recipe
from tuneserve_server.warm_start import read_init

SECTION = "## Continued training (init_from) vs from scratch (Banking77 subset, MiniLM)"


def spec(train, test, args, name: str) -> JobSpec:
    return JobSpec(
        namespace="bench",
        adapter_name=name,
        task=TaskType.CLASSIFICATION,
        request_id=name,
        train=tuple(LabelledText(t, label) for t, label in train),
        validation=tuple(LabelledText(t, label) for t, label in test),
        hyperparameters=Hyperparameters(
            LoraSettings(rank=16, alpha=32, dropout=0.1, target_modules=("query", "key", "value", "dense")),
            OptimizerSettings(learning_rate=2e-3, batch_size=32, epochs=args.epochs, seed=args.seed),
            EvaluationSettings(
                eval_every_steps=args.eval_every, calibrate=False, fit_uncertainty=False, baseline=False
            ),
        ),
    )


def run(source, job: JobSpec, out: Path, init=None) -> tuple[list[tuple[int, float]], float]:
    """Train; [(step, test accuracy)] at every evaluation, and the seconds it took."""
    curve: list[tuple[int, float]] = []

    def on_event(e) -> None:
        if e.type is EventType.EVALUATION and "accuracy" in e.metrics and e.progress is not None:
            curve.append((e.progress.step, e.metrics["accuracy"]))

    ctx = RecipeContext(job, source, on_event=on_event, precision="float32", init=init)
    start = time.perf_counter()
    run_recipe(ClassificationRecipe(ctx), out)
    return curve, time.perf_counter() - start


def first_step(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, acc in curve if acc >= target), None)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--per-label", type=int, default=40)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--docs", type=Path, default=DOCS)
    args = p.parse_args(argv)

    rows = training_subset(args.labels, args.per_label)
    labels = sorted({label for _, label in rows})
    half: dict[str, int] = {}
    a, b = [], []
    for text, label in rows:
        half[label] = half.get(label, 0) + 1
        (a if half[label] <= args.per_label // 2 else b).append((text, label))
    test = [(t, label) for t, label in read_csv("test") if label in labels]
    source = resolve_base_model("minilm")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log(f"v1: scratch on A ({len(a)} rows)")
        v1_curve, v1_s = run(source, spec(a, test, args, "v1"), root / "v1")
        log(f"reference / baseline: scratch on A+B ({len(a) + len(b)} rows)")
        all_curve, all_s = run(source, spec(a + b, test, args, "all"), root / "all")
        target = all_curve[-1][1]
        log(f"continued: from v1 on B ({len(b)} rows)")
        cont_curve, cont_s = run(
            source, spec(b, test, args, "cont"), root / "cont", init=read_init(root / "v1")
        )
    cont_first, all_first = first_step(cont_curve, target), first_step(all_curve, target)
    table = [
        ("v1: scratch on A", len(a), v1_curve[-1][0], v1_curve[-1][1], None, v1_s),
        ("scratch on A+B (baseline)", len(a) + len(b), all_curve[-1][0], all_curve[-1][1], all_first, all_s),
        ("continued from v1 on B", len(b), cont_curve[-1][0], cont_curve[-1][1], cont_first, cont_s),
    ]
    lines = [
        "| run | train rows | steps | final test accuracy | first step reaching the target | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, n, steps, acc, first, secs in table:
        shown = "-" if name.startswith("v1") else (str(first) if first is not None else "not reached")
        lines.append(f"| {name} | {n} | {steps} | {acc:.4f} | {shown} | {secs:.0f} |")
    ratio = f"{all_first / cont_first:.2f}x" if cont_first and all_first else "n/a"
    body = "\n".join(
        [
            f"`{command_as_run('continued_training.py', argv)}` — {args.labels} labels, "
            f"{len(a)} + {len(b)} training rows (A, B), {len(test)} test rows, batch 32, "
            f"lr 2e-3, r=16, {args.epochs} epochs, test accuracy every {args.eval_every} steps; "
            f"{cpu_model()}.",
            "",
            f"Target: the from-scratch-on-A+B version's final accuracy, {target:.4f}.",
            "",
            *lines,
            "",
            f"Steps to the target: continued {cont_first if cont_first is not None else 'not reached'} vs "
            f"scratch {all_first} ({ratio} fewer for the continued run). The continued run also trains on "
            f"half the rows per epoch, so each of its steps costs the same but it has fewer of them.",
        ]
    )
    print(body)
    write_docs(args.docs, SECTION, body)


if __name__ == "__main__":
    main(sys.argv[1:])
