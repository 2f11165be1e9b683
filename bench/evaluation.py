"""Evaluation throughput on the Banking77 test set (issue #13): rows per second of an
evaluation run by the trainer worker, against the same rows sent through Predict and scored on
the client (the baseline, same server, same run).

One run: start a real `tuneserve serve` (default settings, auth none) in a temporary data dir,
train two versions of one adapter through `tuneserve_client.Client` on the first --per-label
rows of each label of examples/data/banking77/train.csv (v1: 1 epoch, v2: --epochs), then on
all 3,080 rows of test.csv:

  - `create_evaluation([v2])` to SUCCEEDED: the worker's rows/s (rows / its wall time) and the
    caller's wall time from CreateEvaluation to SUCCEEDED (queueing, model and adapter loading,
    metrics included);
  - `create_evaluation([v1, v2])`: two targets on the same rows with the comparison (McNemar,
    paired bootstrap with 1,000 resamples for macro-F1 and NLL): rows x targets per second;
  - baseline: `Client.predict(v2, ...)` in calls of 64 texts over the same rows, accuracy
    computed on the client: rows/s, and the evaluation's accuracy beside it (they must agree).

Prints the tables and rewrites the "## Evaluations ..." section of docs/benchmarks.md.

    .venv/bin/python bench/evaluation.py                       # the benchmark (~6 min on 2 cores)
    .venv/bin/python bench/evaluation.py --per-label 5 --no-docs  # a quick check (never writes docs)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DOCS,
    Server,
    code_version,
    command_as_run,
    cpu_model,
    free_port,
    log,
    read_csv,
    training_subset,
    write_docs,
)

SECTION = "## Evaluations: throughput on the Banking77 test set (bench/evaluation.py)"
ADAPTER = "banking77-eval"
BATCH = 64
DEFAULT_PER_LABEL = 30


def train(client, rows, epochs: int, request_id: str):
    job = client.train(ADAPTER, rows, epochs=epochs, baseline=False, request_id=request_id)
    log(f"training {job.id} ({epochs} epoch(s), {job.train_examples} rows)")
    job = client.wait(job, timeout=7200, poll_interval=2.0)
    if job.state != "SUCCEEDED":
        raise RuntimeError(f"training job {job.id} ended {job.state}: {job.error}")
    return job


def evaluate(client, versions: list[str], rows) -> tuple[object, float]:
    started = time.monotonic()
    ev = client.create_evaluation(versions, rows)
    last = [0.0]

    def show(e) -> None:
        if time.monotonic() - last[0] >= 10 or e.done:
            last[0] = time.monotonic()
            log(f"{e.id} {e.state} {e.step}/{e.total_steps or '?'}")

    ev = client.wait_evaluation(ev, timeout=7200, poll_interval=0.5, on_update=show)
    if ev.state != "SUCCEEDED":
        raise RuntimeError(f"evaluation {ev.id} ended {ev.state}: {ev.error}")
    return ev, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=DEFAULT_PER_LABEL, help="train rows per label")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of v2 (v1: 1)")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    quick = args.per_label < DEFAULT_PER_LABEL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import torch

    from tuneserve_client import Client

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    train_rows = training_subset(None, args.per_label)
    test_rows = read_csv("test")
    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-eval-"))
    server: Server | None = None
    try:
        server = Server(tmp / "data", free_port())
        server.wait_serving()
        with Client(server.target, timeout=300) as client:
            v1 = train(client, train_rows, 1, "bench-eval-v1")
            v2 = train(client, train_rows, args.epochs, "bench-eval-v2")
            a, b = f"{ADAPTER}@{v1.adapter_version}", f"{ADAPTER}@{v2.adapter_version}"
            one, one_wall = evaluate(client, [b], test_rows)
            two, two_wall = evaluate(client, [a, b], test_rows)
            t0 = time.monotonic()
            served = []
            for i in range(0, len(test_rows), BATCH):
                served += client.predict(b, [t for t, _ in test_rows[i : i + BATCH]], timeout=300)
            predict_s = time.monotonic() - t0
        server.stop()
    except BaseException:
        if server is not None:
            server.stop()
            print(f"--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(test_rows)
    predict_acc = sum(p.label == g for p, (_, g) in zip(served, test_rows)) / n
    predict_rps = n / predict_s
    rows = [
        (
            "Predict, calls of 64, accuracy on the client (baseline)",
            n,
            predict_s,
            predict_rps,
            predict_s,
            predict_acc,
        ),
        (
            f"evaluation of {b}",
            n,
            one.seconds,
            one.rows_per_second,
            one_wall,
            one.result(b).metrics["accuracy"],
        ),
        (
            f"evaluation of {a} and {b}, compared",
            2 * n,
            two.seconds,
            two.rows_per_second,
            two_wall,
            two.result(b).metrics["accuracy"],
        ),
    ]
    header = "| what | rows | worker s | rows/s | wall s (call to result) | accuracy | rows/s vs baseline |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for what, count, secs, rps, wall, acc in rows:
        lines.append(
            f"| {what} | {count} | {secs:.1f} | {rps:.0f} | {wall:.1f} | {acc:.4f} | {rps / predict_rps:.2f}x |"
        )
    table = "\n".join(lines)
    cmp = two.comparison(a, b)
    m = cmp.mcnemar
    boot = {x.metric: x for x in cmp.bootstrap}
    f1 = boot["macro_f1"]
    comparison = (
        f"| metric | {a} | {b} | {b} - {a} | 95% CI | p |\n|---|---:|---:|---:|---|---:|\n"
        f"| accuracy (McNemar, {m.method}; only A right {m.only_a_correct}, only B right {m.only_b_correct}) "
        f"| {m.a:.4f} | {m.b:.4f} | {m.difference:+.4f} | - | {m.p_value:.3g} |\n"
        f"| macro-F1 (paired bootstrap, {f1.resamples} resamples) | {f1.a:.4f} | {f1.b:.4f} | {f1.difference:+.4f} "
        f"| [{f1.ci_low:+.4f}, {f1.ci_high:+.4f}] | {f1.p_value:.3g} |\n"
        f"| NLL (paired bootstrap) | {boot['nll'].a:.4f} | {boot['nll'].b:.4f} | {boot['nll'].difference:+.4f} "
        f"| [{boot['nll'].ci_low:+.4f}, {boot['nll'].ci_high:+.4f}] | {boot['nll'].p_value:.3g} |"
    )
    print(table, end="\n\n")
    print(comparison)
    total_s = time.monotonic() - started
    body = f"""\
Measured {dt.date.today().isoformat()} on a {os.cpu_count()}-core CPU machine ({cpu_model()}),
Python {platform.python_version()}, torch {torch.__version__}; 1-minute load average
{load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after (the box is shared with other
jobs: the rates move with them).

- **Command:** `{command_as_run("evaluation.py", argv)}` (about {max(1, round(total_s / 60))} min here); code: {code_version()}.
- **Adapter:** `{ADAPTER}`, trained through the service on the first {args.per_label} rows of each
  of the 77 labels of `train.csv` ({len(train_rows)} rows; baseline off): v1 one epoch, v2
  {args.epochs} epochs. **Rows:** all {n} rows of `examples/data/banking77/test.csv`, inline.
- **Evaluation:** run by the trainer worker of `tuneserve serve` (one torch thread pool, the
  serving replica untouched): "worker s" is its wall time (loading the base model, the
  adapters, every forward pass, the metrics and, for two targets, the paired tests);
  "wall s" what the caller waited, CreateEvaluation to SUCCEEDED (the queue poll included).
- **Baseline:** the same rows through `Client.predict` on the API process (the serving path,
  batched), scored on the client: accuracy {predict_acc:.4f} there, {one.result(b).metrics["accuracy"]:.4f}
  in the evaluation of the same version (the same predictions, two code paths).

{table}

The comparison the two-target evaluation stored (v2 against v1 on the same {n} rows):

{comparison}
"""
    if args.no_docs or quick:
        log("not writing docs (--no-docs or a quick run)")
    else:
        write_docs(args.docs, SECTION, body)
        log(f"wrote {SECTION!r} to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
