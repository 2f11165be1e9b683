"""Small-data sweep (issue #17): which epochs x learning rate train a good MiniLM adapter from
5, 10, 30 (and 100) Banking77 examples per intent, and how the service's defaults compare.

Each run is the classification recipe in this process (training/classification.py, exactly what
the trainer worker runs for a job) on the first N `train.csv` rows of each intent, with the
service's stratified 10% hold-out for best-checkpoint selection and temperature scaling, then
scored on every row of `test.csv`: accuracy, macro-F1 and ECE (15 bins, top label) of the
temperature-scaled probabilities. The embedding baseline (training/baseline.py: logistic
regression on the frozen base model's pooled embeddings, fitted on the same training rows) is
scored on the same test rows.

The machine is shared: every run takes /tmp/tuneserve-heavy.lock for itself (not for the sweep),
so other heavy work interleaves. Results are appended to a JSON-lines file as each run ends, so
an interrupted sweep resumes where it stopped (`--results`); `--docs` writes the section of
docs/benchmarks.md from whatever the file holds.

    .venv/bin/python bench/small_data.py --sweep            # the grid, in priority order
    .venv/bin/python bench/small_data.py --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import harness

SECTION = "## Small data: epochs x learning rate on Banking77 slices (bench/small_data.py)"
LOCK = "/tmp/tuneserve-heavy.lock"
RESULTS = Path("/tmp/tuneserve-small-data.jsonl")
TARGETS = ("query", "key", "value", "dense")

# (examples per intent, seed, epochs, learning rate), in the order they run: the 10 and 30
# per-intent slices first (the docs compare defaults there), then 5, then a second seed. The
# order was revised once mid-sweep, after the first four 10-per-intent runs showed lr 2e-3 beating
# the lower rates (the runs already done are kept: results are keyed by slice/seed/config).
TODAY = (4, 2e-3)
PLAN = [
    (10, 0, 4, 2e-3),
    (10, 0, 20, 5e-4),
    (10, 0, 10, 1e-3),
    (10, 0, 10, 2e-3),
    (30, 0, 4, 2e-3),
    (30, 0, 10, 2e-3),
    (10, 0, 20, 2e-3),
    (5, 0, 4, 2e-3),
    (5, 0, 20, 2e-3),
    (5, 0, 40, 2e-3),
    (10, 1, 4, 2e-3),
    (10, 1, 10, 2e-3),
    (30, 0, 10, 1e-3),
    (30, 1, 4, 2e-3),
    (30, 1, 10, 2e-3),
    (5, 0, 20, 5e-4),
    (100, 0, 4, 2e-3),
]


def key(per: int, seed: int, name: str) -> str:
    return f"{per}/{seed}/{name}"


def config_name(epochs: int, lr: float) -> str:
    return f"e{epochs}-lr{lr:g}"


def load_results(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["key"]] = row
    return out


def test_rows() -> list[tuple[str, str]]:
    return harness.read_csv("test")


def spec_for(per: int, seed: int, optimizer: dict):
    from tuneserve_server.domain.jobs import (
        EvaluationSettings,
        Hyperparameters,
        JobSpec,
        LabelledText,
        LoraSettings,
        OptimizerSettings,
        TaskType,
    )
    from tuneserve_server.training.validation import DEFAULT_VALIDATION_FRACTION, split_rows

    rows = [(i + 1, LabelledText(t, c)) for i, (t, c) in enumerate(harness.training_subset(None, per))]
    train, held = split_rows(rows, DEFAULT_VALIDATION_FRACTION, seed)
    return JobSpec(
        namespace="default",
        adapter_name="sweep",
        task=TaskType.CLASSIFICATION,
        request_id="sweep",
        train=tuple(ex for _, ex in train),
        validation=tuple(ex for _, ex in held),
        hyperparameters=Hyperparameters(
            LoraSettings(target_modules=TARGETS),
            OptimizerSettings(seed=seed, **optimizer),
            EvaluationSettings(fit_uncertainty=False, baseline=False),
        ),
    )


def scores(logits, y, num_labels: int, temperature: float) -> dict[str, float]:
    from tuneserve_server.training import calibration
    from tuneserve_server.training.metrics import accuracy, macro_f1

    pred = logits.argmax(-1).tolist()
    return {
        "accuracy": accuracy(y.tolist(), pred),
        "macro_f1": macro_f1(y.tolist(), pred, num_labels),
        "ece": calibration.ece(logits, y, temperature),
    }


def one_run(per: int, seed: int, optimizer: dict, with_baseline: bool) -> dict:
    """Train one adapter on the slice; its test scores (and the baseline's, when asked)."""
    import tempfile

    import torch

    from tuneserve_server.domain.jobs import LabelledText
    from tuneserve_server.modeling import resolve_base_model
    from tuneserve_server.training.baseline import LogisticBaseline
    from tuneserve_server.training.classification import ClassificationRecipe
    from tuneserve_server.training.recipe import RecipeContext

    spec = spec_for(per, seed, optimizer)
    recipe = ClassificationRecipe(RecipeContext(spec, resolve_base_model("minilm")))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = recipe.run(Path(tmp))
    wall = time.monotonic() - started
    test = [LabelledText(t, c) for t, c in test_rows()]
    y = recipe._targets(tuple(test))
    features = recipe._encode(tuple(test))
    logits = recipe._eval_pass(features, recipe._logits, len(recipe.labels))
    out = {
        "train_rows": len(spec.train),
        "validation_rows": len(spec.validation),
        "total_steps": recipe.total_steps,
        "best_step": result.metrics.get("best_step", 0.0),
        "temperature": recipe.temperature,
        "wall_s": wall,
        "test": scores(logits, y, len(recipe.labels), recipe.temperature),
        "validation_macro_f1": result.metrics.get("macro_f1", 0.0),
    }
    if with_baseline:
        started = time.monotonic()
        width = recipe.head.in_features
        with recipe.model.disable_adapter():
            train_x = recipe._eval_pass(recipe._encode(spec.train), recipe._pooled, width)
            test_x = recipe._eval_pass(features, recipe._pooled, width)
        model = LogisticBaseline.fit(train_x, recipe._targets(spec.train), len(recipe.labels))
        base_logits = model.logits(test_x).to(torch.float32)
        out["baseline"] = scores(base_logits, y, len(recipe.labels), 1.0)
        out["baseline"]["wall_s"] = time.monotonic() - started
    return out


def run_locked(fn, *args):
    """`fn(*args)` holding the shared heavy-work lock for this run only."""
    with open(LOCK, "w") as lock:
        harness.log("waiting for the heavy-work lock")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return fn(*args)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def sweep(path: Path, budget_s: float, plan) -> None:
    import torch

    torch.set_num_threads(2)
    done = load_results(path)
    spent = sum(r.get("wall_s", 0.0) for r in done.values())
    for per, seed, optimizer, name in plan:
        k = key(per, seed, name)
        if k in done:
            continue
        if spent > budget_s:
            harness.log(f"compute budget spent ({spent:.0f} s); stopping before {k}")
            break
        with_baseline = not any(
            r["per"] == per and r["seed"] == seed and "baseline" in r for r in done.values()
        )
        harness.log(f"run {k} {optimizer}")
        row = run_locked(one_run, per, seed, optimizer, with_baseline)
        row.update(key=k, per=per, seed=seed, name=name, optimizer=optimizer)
        spent += row["wall_s"]
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        done[k] = row
        harness.log(f"done {k}: test acc {row['test']['accuracy']:.4f} in {row['wall_s']:.0f} s")


def grid_plan():
    return [(per, seed, {"epochs": e, "learning_rate": lr}, config_name(e, lr)) for per, seed, e, lr in PLAN]


def auto_config(per: int, seed: int = 0) -> tuple[dict, str]:
    """The service's automatic defaults (training/auto_defaults.py) for the slice's training rows,
    and the grid name they share with a sweep run (the same run: not repeated)."""
    from tuneserve_server.training.auto_defaults import resolve

    chosen = resolve(len(spec_for(per, seed, {}).train))
    return chosen, config_name(int(chosen["epochs"]), float(chosen["learning_rate"]))


def rule_plan(pers=(5, 10, 30), seeds=(0,)):
    return [(per, seed, *auto_config(per, seed)) for seed in seeds for per in pers]


# --------------------------------------------------------------------------- report
def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def mean_sd(values: list[float], fmt=pct) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} ± {fmt(statistics.stdev(values))}"


def report(path: Path) -> str:
    done = load_results(path)
    by: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for row in done.values():
        by[(row["per"], row["name"])].append(row)
    pers = sorted({p for p, _ in by})
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on a {harness.cpu_model()} ({__import__('os').cpu_count()} cores, "
        "shared with other work: the times move with the load, the accuracies do not), "
        f"torch threads 2; {harness.code_version()}.",
        "",
        f"- **Command:** `{harness.command_as_run('small_data.py', sys.argv[1:])}` after "
        "`--sweep` and `--sweep-auto` runs (one lock-holding run at a time).",
        "- **Data:** the first N `train.csv` rows of each of the 77 intents; the service's stratified "
        "10% hold-out (seeded) for best-checkpoint selection and temperature scaling; "
        "scored on all 3080 `test.csv` rows. Seeds 0 and 1 change the hold-out, the head's "
        "initialisation and the batch order.",
        "- **Fixed:** LoRA r=16 alpha=32 dropout 0.1 on query/key/value/dense, batch 32, warmup 0.06, "
        "weight decay 0.01, evaluation every epoch, best checkpoint by validation macro-F1; "
        "uncertainty outputs off (not what is measured).",
        "- Cells: test accuracy (mean ± sd over the seeds run; one value = one seed) / optimiser steps; "
        "**bold (auto)**: the configuration the new defaults choose for that slice.",
        "",
        "| config | " + " | ".join(f"{p} per intent" for p in pers) + " |",
        "|---|" + "---:|" * len(pers),
    ]
    autos = {p: auto_config(p)[1] for p in {*pers, 10, 30}}
    names = sorted({n for _, n in by}, key=lambda n: (int(n.split("-")[0][1:]), n))
    for name in names:
        cells = []
        for p in pers:
            rows = by.get((p, name), [])
            if not rows:
                cells.append("-")
                continue
            acc = [r["test"]["accuracy"] for r in rows]
            cell = f"{mean_sd(acc)} / {rows[0]['total_steps']}"
            cells.append(f"**{cell}** (auto)" if autos.get(p) == name else cell)
        label = name
        if name == config_name(*TODAY):
            label += " (today's defaults)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Embedding baseline (logistic regression on frozen MiniLM embeddings), test accuracy:"]
    for p in pers:
        base = [r["baseline"]["accuracy"] for r in done.values() if r["per"] == p and "baseline" in r]
        lines.append(f"- {p} per intent: {mean_sd(base)}")
    lines += [
        "",
        "Comparison at 10 and 30 per intent (means over the seeds run; wall time = the recipe's "
        "setup + training + evaluation + calibration + save, the job's time less queueing):",
        "",
        "| slice | configuration | test accuracy | test macro-F1 | test ECE | steps | wall time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in (10, 30):
        options = {n: rows for (pp, n), rows in by.items() if pp == p}
        if not options:
            continue

        def mean(rows, f):
            return statistics.mean(f(r) for r in rows)

        best = max(options, key=lambda n: mean(options[n], lambda r: r["test"]["accuracy"]))
        picks = [
            ("today's defaults", config_name(*TODAY)),
            (f"new defaults (auto: {autos.get(p)})", autos.get(p)),
            (f"best of sweep ({best})", best),
        ]
        for label, n in picks:
            rows = options.get(n)
            if not rows:
                lines.append(f"| {p} | {label} | not run | | | | |")
                continue
            lines.append(
                f"| {p} | {label} | {pct(mean(rows, lambda r: r['test']['accuracy']))} | "
                f"{pct(mean(rows, lambda r: r['test']['macro_f1']))} | "
                f"{mean(rows, lambda r: r['test']['ece']):.4f} | {rows[0]['total_steps']} | "
                f"{mean(rows, lambda r: r['wall_s']):.0f} s |"
            )
        base = [r["baseline"] for r in done.values() if r["per"] == p and "baseline" in r]
        if base:
            lines.append(
                f"| {p} | embedding baseline | {pct(statistics.mean(b['accuracy'] for b in base))} | "
                f"{pct(statistics.mean(b['macro_f1'] for b in base))} | "
                f"{statistics.mean(b['ece'] for b in base):.4f} | - | "
                f"{statistics.mean(b['wall_s'] for b in base):.0f} s (after the base model is loaded) |"
            )
    from tuneserve_server.training import auto_defaults as rule

    full = rule.resolve(9000)
    lines += [
        "",
        f"**The rule** (training/auto_defaults.py, for a classification job that sets neither `epochs` nor "
        f"`max_steps`): epochs = min({rule.MAX_EPOCHS}, max({rule.BASE_EPOCHS}, ceil({rule.MIN_STEPS} / steps per "
        f"epoch))), learning rate {rule.SMALL_DATA_LR:g} when that is more than {rule.BASE_EPOCHS} epochs (else "
        f"today's {full['learning_rate']:g}), batch {full['batch_size']}, warmup {full['warmup_ratio']:g}. "
        "Step floor and learning rate are read off the table above: lr 2e-3 beat 1e-3 and 5e-4 at the "
        "same or more steps, and about 220 steps (10 epochs at 10 per intent) beat today's 88; the "
        "floor is where the measured gain was, not a fitted optimum (the sweep is small: see below).",
        f"- **Full set:** 9000 training rows give {full['epochs']} epochs at lr {full['learning_rate']:g}, batch "
        f"{full['batch_size']} (1128 steps): exactly today's defaults, so the full-set figure of "
        "'Banking77, full training set' above (92.8% test accuracy, 12 min) stands; the rule never gives fewer "
        "steps than today's defaults at any size (tests/unit/server/training/test_small_data_submit.py).",
        "- **What a job at these sizes runs:** the service cross-validates when the 10% hold-out would have "
        "fewer than 200 rows (under about 2,000 rows: 5 and 10 per intent here), so its job takes about "
        "6x the single-run wall time above (5 folds + the final run); the sweep measures the single "
        "hold-out run, which is what the step budget is about.",
    ]
    total = sum(r["wall_s"] for r in done.values())
    lines += ["", f"Runs: {len(done)}; compute {total / 60:.0f} min in all."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--sweep", action="store_true", help="run the grid (resumes from --results)")
    ap.add_argument("--sweep-auto", action="store_true", help="run the service's auto defaults at 10 and 30")
    ap.add_argument(
        "--budget-min", type=float, default=40.0, help="stop starting runs after this much compute"
    )
    ap.add_argument("--docs", type=Path, default=None, help="write the section into this markdown file")
    args = ap.parse_args(argv)
    if args.sweep:
        sweep(args.results, args.budget_min * 60, grid_plan())
    if args.sweep_auto:
        sweep(args.results, math.inf, rule_plan())
    body = report(args.results)
    print(body)
    if args.docs:
        harness.write_docs(args.docs, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
