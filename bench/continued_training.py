"""Continued training (issue 13 item 3): does a version continued from v1 on new data reach
the accuracy of a version trained from scratch on all the data in fewer steps?

Banking77, the first --labels labels, --per-label rows each, split in half: slice A (the first
half of each label's rows) and slice B (the rest, "the new rows"). For each --seeds seed:
v1 = from scratch on A; the baseline = from scratch on A+B, whose final test accuracy is that
seed's target. Then, every run evaluated on the test rows of those labels every --eval-every
optimiser steps:

- continued from v1 on B, --epochs epochs (B alone, as many epochs as v1 and the baseline);
- continued from v1 on A+B, --epochs epochs (the updated full dataset, the way a version is
  continued when new rows arrive);
- continued from v1 on B for as many steps as the baseline ran, at --lr and at --low-lr (it
  starts from trained weights).

Reported per run and seed: the first evaluated step reaching the target, and the same plus
v1's steps (what the continued version cost in all). MiniLM, the real recipe in-process (no
server), float32.

    .venv/bin/python bench/continued_training.py [--labels 10 --per-label 40 --epochs 3 --seeds 42 43]"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import DOCS, code_version, command_as_run, cpu_model, log, read_csv, training_subset, write_docs

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


def spec(
    train, test, name: str, *, lr: float, epochs: int, seed: int, eval_every: int, max_steps: int = 0
) -> JobSpec:
    return JobSpec(
        namespace="bench",
        adapter_name=name,
        task=TaskType.CLASSIFICATION,
        request_id=name,
        train=tuple(LabelledText(t, label) for t, label in train),
        validation=tuple(LabelledText(t, label) for t, label in test),
        hyperparameters=Hyperparameters(
            LoraSettings(rank=16, alpha=32, dropout=0.1, target_modules=("query", "key", "value", "dense")),
            OptimizerSettings(learning_rate=lr, batch_size=32, epochs=epochs, max_steps=max_steps, seed=seed),
            EvaluationSettings(
                eval_every_steps=eval_every, calibrate=False, fit_uncertainty=False, baseline=False
            ),
        ),
    )


def run(source, job: JobSpec, out: Path, init=None) -> tuple[list[tuple[int, float]], float]:
    """Train; [(step, test accuracy)] at every evaluation, and the seconds it took."""
    curve: list[tuple[int, float]] = []

    def on_event(e) -> None:
        # The message starts "step N:" (the event's progress may be a few steps stale).
        if e.type is EventType.EVALUATION and "accuracy" in e.metrics and e.message.startswith("step "):
            curve.append((int(e.message.split()[1].rstrip(":")), e.metrics["accuracy"]))

    out.mkdir(parents=True)
    ctx = RecipeContext(job, source, on_event=on_event, precision="float32", init=init)
    start = time.perf_counter()
    run_recipe(ClassificationRecipe(ctx), out)
    return curve, time.perf_counter() - start


def first_step(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, acc in curve if acc >= target - 1e-9), None)  # 1e-9: float rounding of target - tol


@dataclass
class Result:
    curve: list[tuple[int, float]]
    seconds: float

    @property
    def steps(self) -> int:
        return self.curve[-1][0]

    @property
    def final(self) -> float:
        return self.curve[-1][1]


# (key, label, data ("A", "B" or "AB"), from v1?, learning rate arg, steps: "epochs" or "baseline")
RUNS = (
    ("v1", "v1: scratch on A", "A", False, "lr", "epochs"),
    ("scratch", "scratch on A+B (baseline, sets the target)", "AB", False, "lr", "epochs"),
    ("cont_b", "continued from v1 on B, {epochs} epochs (as before)", "B", True, "lr", "epochs"),
    ("cont_ab", "continued from v1 on A+B, {epochs} epochs", "AB", True, "lr", "epochs"),
    ("cont_b_long", "continued from v1 on B, the baseline's steps", "B", True, "lr", "baseline"),
    ("cont_b_low", "continued from v1 on B, the baseline's steps, lower lr", "B", True, "low_lr", "baseline"),
)


def shown(step: int | None) -> str:
    return str(step) if step is not None else "not reached"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--per-label", type=int, default=40)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--low-lr", type=float, default=5e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    p.add_argument(
        "--tolerance", type=float, default=0.01, help="also report reaching the target less this (accuracy)"
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="JSON file of finished seeds' curves: seeds found there (same settings) are not rerun, "
        "each new seed is added as it finishes",
    )
    p.add_argument(
        "--max-new-seeds",
        type=int,
        default=0,
        help="with --cache: train at most this many seeds now (0: all), and write the docs only once "
        "every seed is in the cache (so a long sweep fits in short holds of a shared machine)",
    )
    p.add_argument("--docs", type=Path, default=DOCS)
    args = p.parse_args(argv)
    settings = {k: getattr(args, k) for k in ("labels", "per_label", "epochs", "eval_every", "lr", "low_lr")}
    cached: dict[str, dict] = {}
    if args.cache and args.cache.exists():
        cached = json.loads(args.cache.read_text())

    rows = training_subset(args.labels, args.per_label)
    labels = sorted({label for _, label in rows})
    half: dict[str, int] = {}
    a, b = [], []
    for text, label in rows:
        half[label] = half.get(label, 0) + 1
        (a if half[label] <= args.per_label // 2 else b).append((text, label))
    data = {"A": a, "B": b, "AB": a + b}
    test = [(t, label) for t, label in read_csv("test") if label in labels]
    source = resolve_base_model("minilm")
    results: dict[int, dict[str, Result]] = {}
    targets: dict[int, float] = {}
    measured: dict[int, str] = {}  # seed -> when its runs started
    new = 0
    for seed in args.seeds:
        entry = cached.get(str(seed))
        if entry and entry["settings"] == settings:
            log(f"seed {seed}: from {args.cache} (measured {entry['started']})")
            results[seed] = {
                k: Result([tuple(pt) for pt in r["curve"]], r["seconds"]) for k, r in entry["runs"].items()
            }
            targets[seed] = results[seed]["scratch"].final
            measured[seed] = entry["started"]
            continue
        if args.cache and args.max_new_seeds and new >= args.max_new_seeds:
            continue
        new += 1
        seed_started = measured[seed] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        got: dict[str, Result] = {}
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for key, label, which, from_v1, lr_arg, budget in RUNS:
                rows_in = data[which]
                lr = getattr(args, lr_arg)
                if budget == "baseline":  # as many steps as the baseline ran: enough epochs, capped
                    steps_per_epoch = -(-len(rows_in) // 32)
                    max_steps = got["scratch"].steps
                    epochs = -(-max_steps // steps_per_epoch)
                else:
                    epochs, max_steps = args.epochs, 0
                log(f"seed {seed}: {label.format(epochs=args.epochs)} ({len(rows_in)} rows, lr {lr:g})")
                job = spec(
                    rows_in,
                    test,
                    key,
                    lr=lr,
                    epochs=epochs,
                    seed=seed,
                    eval_every=args.eval_every,
                    max_steps=max_steps,
                )
                init = read_init(root / "v1") if from_v1 else None
                got[key] = Result(*run(source, job, root / key, init=init))
        results[seed] = got
        targets[seed] = got["scratch"].final
        if args.cache:
            cached[str(seed)] = {
                "settings": settings,
                "started": seed_started,
                "runs": {k: {"curve": r.curve, "seconds": r.seconds} for k, r in got.items()},
            }
            args.cache.write_text(json.dumps(cached))
    missing = [s for s in args.seeds if s not in results]
    if missing:
        log(f"seeds {missing} still to run (rerun the same command); the docs are written once all are done")
        return

    seeds = args.seeds
    tol = args.tolerance
    times = sorted(set(measured.values()))
    when = times[0] if len(times) == 1 else "; ".join(f"seed {s} from {measured[s]}" for s in seeds)
    per_seed = " / ".join(str(s) for s in seeds)
    lines = [
        f"| run | train rows | lr | steps | final test accuracy ({per_seed}) | first step reaching the target "
        f"({per_seed}) | the same with v1's steps | first step within {tol:g} of the target | "
        "the same with v1's steps | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # firsts[(key, tolerance)]: per seed, the first evaluated step at or above the target less it
    firsts: dict[tuple[str, float], list[int | None]] = {}
    for key, label, which, from_v1, lr_arg, _ in RUNS:
        rs = [results[s][key] for s in seeds]
        cells = []
        for t in (0.0, tol):
            first = [first_step(results[s][key].curve, targets[s] - t) for s in seeds]
            firsts[(key, t)] = first
            cells.append("-" if key == "v1" else " / ".join(shown(f) for f in first))
            cells.append(
                " / ".join(
                    shown(f + results[s]["v1"].steps if f is not None else None) for s, f in zip(seeds, first)
                )
                if from_v1
                else "-"
            )
        steps = sorted({r.steps for r in rs})
        lines.append(
            f"| {label.format(epochs=args.epochs)} | {len(data[which])} | {getattr(args, lr_arg):g} | "
            f"{'/'.join(map(str, steps))} | {' / '.join(f'{r.final:.4f}' for r in rs)} | {' | '.join(cells)} | "
            f"{statistics.mean(r.seconds for r in rs):.0f} |"
        )
    curves = []
    for seed in seeds:
        curves.append(f"Seed {seed}, test accuracy at each evaluated step (target {targets[seed]:.4f}):")
        curves.append("")
        for key, label, *_ in RUNS:
            points = " ".join(f"{s}:{acc:.4f}" for s, acc in results[seed][key].curve)
            curves.append(f"- {label.format(epochs=args.epochs)}: {points}")
        curves.append("")

    def verdict(key: str, t: float, with_v1: bool) -> str:
        wins = 0
        for i, (s, f) in enumerate(zip(seeds, firsts[(key, t)])):
            base = firsts[("scratch", t)][i]
            cost = None if f is None else f + (results[s]["v1"].steps if with_v1 else 0)
            wins += cost is not None and base is not None and cost < base
        return f"{wins} of {len(seeds)}"

    claims = []
    for key, label, _, from_v1, *_ in RUNS:
        if from_v1:
            claims.append(
                f"- {label.format(epochs=args.epochs)}: fewer steps than the baseline to the target in "
                f"{verdict(key, 0.0, False)} seeds ({verdict(key, 0.0, True)} counting v1's steps); to within "
                f"{tol:g} of it in {verdict(key, tol, False)} ({verdict(key, tol, True)} counting v1's steps)."
            )
    body = "\n".join(
        [
            f"`{command_as_run('continued_training.py', argv)}` — measured {when}, {code_version()}, "
            f"{cpu_model()} (2 cores shared with other work: the seconds move with the load, the "
            "accuracies do not).",
            "",
            f"{args.labels} labels, {len(a)} + {len(b)} training rows (A = the first half of each label's rows, "
            f"B = the rest, the new rows), {len(test)} test rows, batch 32, r=16, warmup 6% then linear decay, "
            f"test accuracy every {args.eval_every} steps (and at the last), seeds {', '.join(map(str, seeds))} "
            "(the seed sets LoRA and head init, shuffling and dropout; the rows are the same). Each seed's "
            "target is its baseline's final test accuracy; a run reaches it at the first evaluated step with "
            f"accuracy >= the target (or >= the target less {tol:g}: one test row is {1 / len(test):.4f}, "
            'so the strict target moves with a row or two). "With v1\'s steps" adds the steps v1 took (a '
            "continued version costs v1's training too when v1 was not needed anyway).",
            "",
            *lines,
            "",
            *curves,
            "Which claims hold (steps to the target, strictly fewer than the baseline's, per seed):",
            "",
            *claims,
            "",
            "Caveats: one data split, "
            f"{len(seeds)} seeds, evaluations every {args.eval_every} steps (a first step is a multiple of "
            f"{args.eval_every} or a run's last step); the test rows are also the recipe's validation rows, so "
            "v1's published weights are its best evaluation by macro-F1 on them (a continued run starts from "
            "that checkpoint); the target is the baseline's last evaluation, so the baseline reaches it by "
            "construction at its last step at the latest.",
        ]
    )
    print(body)
    write_docs(args.docs, SECTION, body)


if __name__ == "__main__":
    main(sys.argv[1:])
