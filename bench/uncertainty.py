"""Prediction sets, abstention and out-of-domain flags of a Banking77 adapter, measured on data
the adapter never saw.

One run: start a real `tuneserve serve` (default settings) in a temporary data dir, train ONE
adapter through `tuneserve_client.Client` on all of examples/data/banking77/train.csv with the
service's defaults (validation split included; the uncertainty model is fitted on that split
at the end of training) except `abstain_target_precision` (--target-precision, 0.97 as the
issue asks; the default is 0.95), then, all through `Client.predict` on the test set (3,080
rows, never used in training or calibration):

  - coverage (share of rows whose true label is in the set), mean set size and the share of
    empty sets, at confidence 0.8 / 0.9 / 0.95, for the LAC and APS scores and the "auto"
    (Mondrian where every label has the rows for it) and "marginal" calibrations;
  - per-label coverage at 0.9: the spread over the 77 labels (min / 10th percentile / median)
    and how many labels fall more than 5 points short, marginal vs auto;
  - accuracy answering everything vs answering the most confident 80% (selective accuracy),
    and the served `abstain` flag at the fitted threshold: abstain rate and the precision
    reached on the answered rows, against the target;
  - out-of-domain: `ood_score` on the test set vs examples/data/ood/general.txt (302 general
    questions and sentences, CC0), AUROC, and the share flagged `out_of_domain` on each side
    (the threshold is fitted for a 5% in-domain false-positive rate);
  - Predict latency: 1-text and 64-text calls, plain vs `confidence=0.9` vs
    `confidence=0.9, uncertainty=True` (p50 ratio to plain, one run, same server).

Prints the tables and rewrites the "## Uncertainty ..." section of docs/benchmarks.md.

    .venv/bin/python bench/uncertainty.py                  # the benchmark (~25 min on 2 cores)
    .venv/bin/python bench/uncertainty.py --per-label 8 --epochs 1 --no-docs   # a quick check

--per-label / --epochs make a quick check: such runs never write the docs. --keep DIR keeps
the server's data dir there and reuses an adapter already trained in it (reruns of the
measurements without retraining).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banking77_full import accuracy, fmt_duration
from harness import (
    DOCS,
    ROOT,
    Server,
    code_version,
    command_as_run,
    cpu_model,
    free_port,
    log,
    percentile,
    read_csv,
    summarize,
    training_subset,
    write_docs,
)

SECTION = "## Uncertainty: prediction sets, abstention, out-of-domain (bench/uncertainty.py)"
ADAPTER = "banking77-uncertainty"
OOD_TEXTS = ROOT / "examples" / "data" / "ood" / "general.txt"
LEVELS = (0.8, 0.9, 0.95)
SCORES = ("lac", "aps")
MODES = ("auto", "marginal")
BATCH = 64
PER_LABEL_LEVELS = (0.8, 0.9)
SHORTFALL = 0.05  # a label "falls short" when its test coverage is this far below the level


# --------------------------------------------------------------------------- metrics
def auroc(in_scores: Sequence[float], out_scores: Sequence[float]) -> float:
    """P(out-of-domain score > in-domain score), ties counted half (Mann-Whitney U / n_in n_out)."""
    ranked = sorted([(s, 0) for s in in_scores] + [(s, 1) for s in out_scores])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # mean 1-based rank of the tie group
        rank_sum += mid * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    n_out, n_in = len(out_scores), len(in_scores)
    return (rank_sum - n_out * (n_out + 1) / 2) / (n_out * n_in)


def selective_accuracy(correct: Sequence[bool], confidence: Sequence[float], coverage: float) -> float:
    """Accuracy on the `coverage` most confident share of rows (ties: wrong rows first)."""
    order = sorted(range(len(correct)), key=lambda i: (-confidence[i], correct[i]))
    keep = max(1, round(coverage * len(order)))
    return sum(correct[i] for i in order[:keep]) / keep


# --------------------------------------------------------------------------- service calls
def predict_all(client, ref: str, texts: list[str], **options) -> list:
    out = []
    for i in range(0, len(texts), BATCH):
        out += client.predict(ref, texts[i : i + BATCH], timeout=300, **options)
    return out


def train(client, rows, epochs: int | None, target_precision: float, progress_s: float):
    job = client.train(ADAPTER, rows, epochs=epochs, abstain_target_precision=target_precision)
    log(f"submitted job {job.id}: {job.train_examples} train / {job.validation_examples} validation")
    last = -1e9
    while not job.done:
        time.sleep(2.0)
        job = client.get_job(job.id)
        if time.monotonic() - last >= progress_s or job.done:
            last = time.monotonic()
            loss = f"{job.train_loss:.4f}" if job.train_loss is not None else "-"
            print(
                f"[progress] {job.state} step {job.step}/{job.total_steps or '?'} epoch {job.epoch} "
                f"loss {loss} load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    if job.state != "SUCCEEDED":
        raise RuntimeError(f"training job {job.id} ended {job.state}: {job.error}")
    return job


def latency(client, ref: str, texts: list[str], calls: int, rows: int, **options) -> dict[str, float]:
    batches = [[texts[(i * rows + j) % len(texts)] for j in range(rows)] for i in range(calls)]
    for b in batches[:3]:  # warm
        client.predict(ref, b, **options)
    samples = []
    for b in batches:
        start = time.perf_counter()
        client.predict(ref, b, **options)
        samples.append(time.perf_counter() - start)
    return summarize(samples)


# --------------------------------------------------------------------------- the run
def measure(client, ref: str, test_rows, ood_texts, args) -> dict:
    texts = [t for t, _ in test_rows]
    y = [lab for _, lab in test_rows]
    labels = sorted(set(y))
    res: dict = {"sets": [], "per_label": {}}

    # ---- prediction sets
    for score in SCORES:
        for mode in MODES:
            for level in LEVELS:
                t0 = time.perf_counter()
                preds = predict_all(
                    client, ref, texts, confidence=level, conformal_score=score, conformal_mode=mode
                )
                hit = [lab in (p.prediction_set or []) for p, lab in zip(preds, y, strict=True)]
                sizes = [len(p.prediction_set or []) for p in preds]
                used = sorted({p.conformal_mode for p in preds})
                row = {
                    "score": score,
                    "mode": mode,
                    "used": "/".join(used),
                    "level": level,
                    "coverage": sum(hit) / len(hit),
                    "size": sum(sizes) / len(sizes),
                    "empty": sum(s == 0 for s in sizes) / len(sizes),
                    "singleton": sum(s == 1 for s in sizes) / len(sizes),
                }
                res["sets"].append(row)
                log(
                    f"{score}/{mode} ({row['used']}) @ {level}: coverage {row['coverage']:.4f} "
                    f"size {row['size']:.2f} ({time.perf_counter() - t0:.0f}s)"
                )
                if level in PER_LABEL_LEVELS:
                    per = []
                    for lab in labels:
                        idx = [i for i, t in enumerate(y) if t == lab]
                        per.append(sum(hit[i] for i in idx) / len(idx))
                    res["per_label"][(score, mode, level)] = (row["used"], per)

    # ---- abstention and out-of-domain, one pass each side
    preds = predict_all(client, ref, texts, uncertainty=True)
    ood_preds = predict_all(client, ref, ood_texts, uncertainty=True)
    correct = [p.label == lab for p, lab in zip(preds, y, strict=True)]
    conf = [p.score for p in preds]
    answered = [not p.abstain for p in preds]
    n_answered = sum(answered)
    reasons: dict[str, int] = {}
    for p in preds:
        if p.abstain:
            reasons[p.abstain_reason] = reasons.get(p.abstain_reason, 0) + 1
    conf_answered = ["low_confidence" not in p.abstain_reason for p in preds]  # the confidence policy alone
    n_conf_answered = sum(conf_answered)
    res["abstain"] = {
        "accuracy_all": accuracy(y, [p.label for p in preds]),
        "selective_80": selective_accuracy(correct, conf, 0.8),
        "selective_90": selective_accuracy(correct, conf, 0.9),
        "selective_50": selective_accuracy(correct, conf, 0.5),
        "abstain_rate": 1 - n_answered / len(preds),
        "precision": sum(c for c, a in zip(correct, answered, strict=True) if a) / max(n_answered, 1),
        "conf_abstain_rate": 1 - n_conf_answered / len(preds),
        "conf_precision": sum(c for c, a in zip(correct, conf_answered, strict=True) if a)
        / max(n_conf_answered, 1),
        "reasons": reasons,
        "ood_abstain_rate": sum(p.abstain for p in ood_preds) / len(ood_preds),
    }
    in_scores = [p.ood_score for p in preds]
    out_scores = [p.ood_score for p in ood_preds]
    res["ood"] = {
        "auroc": auroc(in_scores, out_scores),
        "in_flagged": sum(p.out_of_domain for p in preds) / len(preds),
        "out_flagged": sum(p.out_of_domain for p in ood_preds) / len(ood_preds),
        "in_median": statistics.median(in_scores),
        "out_median": statistics.median(out_scores),
        "n_out": len(ood_texts),
    }
    # ---- latency
    lat = {}
    variants = (
        ("plain", {}),
        ("confidence=0.9", {"confidence": 0.9}),
        ("confidence=0.9 + uncertainty", {"confidence": 0.9, "uncertainty": True}),
    )
    for rows, calls in ((1, args.latency_calls), (BATCH, max(10, args.latency_calls // 5))):
        for name, options in variants:
            lat[(rows, name)] = latency(client, ref, texts, calls, rows, **options)
            log(f"latency {rows} rows {name}: p50 {lat[(rows, name)]['p50']:.1f} ms")
    res["latency"] = lat
    return res


# --------------------------------------------------------------------------- tables
def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def tables(res: dict, target_precision: float, metrics: dict[str, float]) -> dict[str, str]:
    out = {}
    lines = [
        "| score | calibration asked (used) | level | test coverage | miss vs level | mean set size | singletons | empty sets |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["sets"]:
        lines.append(
            f"| {r['score'].upper()} | {r['mode']} ({r['used']}) | {r['level']:.2f} | **{pct(r['coverage'])}** "
            f"| {100 * (r['coverage'] - r['level']):+.1f} pt | {r['size']:.2f} | {pct(r['singleton'])} "
            f"| {pct(r['empty'])} |"
        )
    out["sets"] = "\n".join(lines)

    lines = [
        "| score | level | calibration asked (used) | min label coverage | 10th pct | median "
        "| labels > 5 pt short of the level |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for (score, mode, level), (used, per) in sorted(res["per_label"].items(), key=lambda kv: kv[0][2]):
        short = sum(c < level - SHORTFALL for c in per)
        lines.append(
            f"| {score.upper()} | {level:.2f} | {mode} ({used}) | {pct(min(per))} | {pct(percentile(per, 10))} "
            f"| {pct(statistics.median(per))} | {short} of {len(per)} |"
        )
    out["per_label"] = "\n".join(lines)

    a = res["abstain"]
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(a["reasons"].items())) or "none"
    out["abstain"] = "\n".join(
        [
            "| measure | test | validation (job metrics) |",
            "|---|---:|---:|",
            f"| accuracy, answering every text | {pct(a['accuracy_all'])} "
            f"| {pct(metrics.get('selective_accuracy_100', float('nan')))} |",
            f"| selective accuracy, most confident 90% | {pct(a['selective_90'])} "
            f"| {pct(metrics.get('selective_accuracy_90', float('nan')))} |",
            f"| **selective accuracy, most confident 80%** | **{pct(a['selective_80'])}** "
            f"| {pct(metrics.get('selective_accuracy_80', float('nan')))} |",
            f"| selective accuracy, most confident 50% | {pct(a['selective_50'])} "
            f"| {pct(metrics.get('selective_accuracy_50', float('nan')))} |",
            f"| AURC (validation; lower is better) | - | {metrics.get('aurc', float('nan')):.4f} |",
            f"| abstention threshold (top probability, fitted for precision {target_precision}) | - "
            f"| {metrics.get('abstain_threshold', float('nan')):.4f} |",
            f"| abstain rate, low confidence only | {pct(a['conf_abstain_rate'])} "
            f"| {pct(1 - metrics.get('abstain_validation_answered', float('nan')))} |",
            f"| **precision of the answered rows, low confidence only** (target {target_precision}) "
            f"| **{pct(a['conf_precision'])}** | {pct(metrics.get('abstain_validation_accuracy', float('nan')))} |",
            f"| abstain rate, served flag (low confidence or out of domain) | {pct(a['abstain_rate'])} | - |",
            f"| precision of the rows the served flag answers | {pct(a['precision'])} | - |",
            f"| served abstain reasons (test rows) | {reasons} | - |",
            f"| abstain rate on the out-of-domain texts | {pct(a['ood_abstain_rate'])} | - |",
        ]
    )
    o = res["ood"]
    out["ood"] = "\n".join(
        [
            "| measure | value |",
            "|---|---:|",
            f"| **AUROC**, Banking77 test (in) vs general.txt (out), `ood_score` | **{o['auroc']:.4f}** |",
            f"| flagged `out_of_domain`: Banking77 test (false positives; target "
            f"{metrics.get('ood_fpr_target', float('nan')):.2f}) | {pct(o['in_flagged'])} |",
            f"| flagged `out_of_domain`: general.txt ({o['n_out']} texts) | {pct(o['out_flagged'])} |",
            f"| median `ood_score` in / out (squared Mahalanobis; threshold "
            f"{metrics.get('ood_threshold', float('nan')):.1f}) | {o['in_median']:.1f} / {o['out_median']:.1f} |",
        ]
    )
    lines = [
        "| texts per call | options | p50 | p95 | p50 ratio to plain | p95 ratio |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    lat = res["latency"]
    for (rows, name), s in lat.items():
        base = lat[(rows, "plain")]
        lines.append(
            f"| {rows} | {name} | {s['p50']:.1f} ms | {s['p95']:.1f} ms | **{s['p50'] / base['p50']:.2f}x** "
            f"| {s['p95'] / base['p95']:.2f}x |"
        )
    out["latency"] = "\n".join(lines)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=None, help="quick check: N train rows per label")
    ap.add_argument("--epochs", type=int, default=None, help="quick check: epochs for the job")
    ap.add_argument(
        "--target-precision", type=float, default=0.97, help="abstain_target_precision of the job"
    )
    ap.add_argument("--latency-calls", type=int, default=100, help="timed 1-text calls per variant")
    ap.add_argument("--progress-s", type=float, default=60.0)
    ap.add_argument("--keep", type=Path, default=None, help="data dir to keep and reuse (skips retraining)")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    quick = args.per_label is not None or args.epochs is not None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import torch

    from tuneserve_client import Client

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    train_rows = training_subset(None, args.per_label)
    test_rows = read_csv("test")
    ood_texts = [line.strip() for line in OOD_TEXTS.read_text().splitlines() if line.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-unc-"))
    data_dir = args.keep or tmp / "data"
    server: Server | None = None
    try:
        server = Server(data_dir, free_port())
        server.wait_serving()
        with Client(server.target, timeout=300) as client:
            existing = [a for a in client.list_adapters() if a.name == ADAPTER]
            if existing and args.keep:
                version = existing[0].latest_version
                log(f"reusing {ADAPTER}@{version} from {data_dir}")
                train_s = float("nan")
                validation_rows = None
            else:
                job = train(client, train_rows, args.epochs, args.target_precision, args.progress_s)
                version = job.adapter_version
                train_s = (job.finished_at - job.started_at).total_seconds()
                validation_rows = job.validation_examples
            ref = f"{ADAPTER}@{version}"
            adapter = client.get_adapter(ADAPTER)
            metrics = next(v.metrics for v in adapter.versions if v.version == version)
            log(
                f"adapter {ref}: uncertainty metrics from GetAdapter: "
                f"{ {k: round(v, 4) for k, v in metrics.items() if k.startswith(('conformal_', 'abstain', 'ood'))} }"
            )
            res = measure(client, ref, test_rows, ood_texts, args)
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

    t = tables(res, args.target_precision, metrics)
    for name in ("sets", "per_label", "abstain", "ood", "latency"):
        print(t[name], end="\n\n")
    total_s = time.monotonic() - started
    command = command_as_run("uncertainty.py", argv)
    worst = max(abs(r["coverage"] - r["level"]) for r in res["sets"] if r["used"] == "marginal")
    body = f"""\
Measured {dt.date.today().isoformat()} on a {os.cpu_count()}-core CPU machine ({cpu_model()}),
Python {platform.python_version()}, torch {torch.__version__}; 1-minute load average
{load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after (the box is shared: the
latencies move with other jobs, the coverages do not).

- **Command:** `{command}` (about {max(1, round(total_s / 60))} min here); code: {code_version()}.
- **Job:** one `Client.train("{ADAPTER}", examples, abstain_target_precision={args.target_precision})`
  with all {len(train_rows)} rows of `examples/data/banking77/train.csv`, every other setting
  the service's default: a stratified 10% validation split
  ({validation_rows if validation_rows is not None else "?"} rows) on which the temperature, the
  conformal scores, the abstention threshold and the out-of-domain threshold are fitted
  (train time {fmt_duration(train_s) if train_s == train_s else "not measured: adapter reused"}).
- **Test:** all {len(test_rows)} rows of `examples/data/banking77/test.csv` through
  `Client.predict` in calls of {BATCH} texts; out-of-domain texts: the {len(ood_texts)} lines of
  `examples/data/ood/general.txt` (general-knowledge questions and everyday sentences, CC0).

### Conformal prediction sets on the test set

Split conformal gives coverage >= the level in expectation over calibration splits; one split
of ~1,000 rows moves the realised coverage by about a point. APS is randomised (u from a hash of
the text, so a text always gets the same set); the deterministic APS this service shipped first
(the crossing label always in) covered 99.7% / 99.9% / 100.0% with 7.7 / 10.8 / 13.6 labels per
set at 0.8 / 0.9 / 0.95 on this adapter (this script's run at commit 7473883): valid, but of
no use with a confident model. Largest gap between test coverage
and the level over the marginal rows below: **{100 * worst:.1f} points** (the issue's bar: 1.5).
"auto" uses per-label (Mondrian) thresholds when every label has the validation rows the
level needs, marginal ones otherwise; the column says which was used.

{t["sets"]}

### Per-label coverage (77 labels, 40 test rows each)

Marginal calibration covers the level on average over labels, not on every intent; Mondrian
calibration holds each label to it, but needs ceil(1 / (1 - level)) - 1 validation rows of
every label ({metrics.get("conformal_min_label_rows", float("nan")):.0f} for the rarest here, so
"auto" is Mondrian up to level {metrics.get("conformal_max_level_mondrian", float("nan")):.2f});
with that few rows a label's threshold is itself noisy and conservative. 40 test rows per label
put about 5 points of sampling noise on each label's coverage.

{t["per_label"]}

### Selective answering and abstention

"Selective accuracy" answers the most confident share of texts (temperature-scaled top
probability). The served `abstain` flag is low confidence (below the fitted threshold) or out
of domain; the "low confidence only" rows are the abstention policy itself, whose precision
target is what it was fitted for.

{t["abstain"]}

### Out-of-domain detection (the fine-tuned adapter's pooled embeddings)

{t["ood"]}

### Predict latency with and without the uncertainty outputs

The same server and adapter; calls one after another, {args.latency_calls} timed 1-text calls
and {max(10, args.latency_calls // 5)} 64-text calls per row, after 3 warm-up calls.

{t["latency"]}
"""
    if not args.no_docs and not quick:
        write_docs(args.docs, SECTION, body)
        log(f"wrote {SECTION!r} to {args.docs}")
    elif not args.no_docs:
        log("quick check: not writing the docs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
