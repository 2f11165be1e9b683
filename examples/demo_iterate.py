"""`make demo-iterate`: the release loop on Banking77, through the public surface only (a
`tuneserve serve` process and the Python client).

1. train v1 of `banking77-iterate` on a small slice of the training set;
2. evaluate v1 on a fixed, stratified subset of the test set (the Evaluations API);
3. predict on training-pool queries outside the slice, answer the wrong ones with feedback
   (the right label and the input), and export that feedback as a dataset;
4. train v2 from v1 (`init_from`) on the slice plus the corrections, released with
   `promotion="if_better"` gated on the pinned evaluation rows (an uploaded dataset);
5. print the promotion decision, what the bare name now serves, and v1 against v2 on the
   same rows (McNemar's test on accuracy, paired bootstrap intervals)."""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo import read, running_server, subset

from tuneserve_client import Client

NAME = "banking77-iterate"


def wait_job(client: Client, job, what: str):
    def show(j) -> None:
        loss = f" loss {j.train_loss:.3f}" if j.train_loss is not None else ""
        print(
            f"\r  {what}: {j.state:<9} step {j.step}/{j.total_steps} epoch {j.epoch}{loss}   ",
            end="",
            flush=True,
        )

    job = client.wait(job, timeout=1800, poll_interval=1.0, on_update=show)
    print()
    if job.state != "SUCCEEDED":
        raise SystemExit(f"{what} ended {job.state}: {job.error}")
    return job


def wait_eval(client: Client, ev, what: str):
    def show(e) -> None:
        print(f"\r  {what}: {e.state:<9} step {e.step}/{e.total_steps}   ", end="", flush=True)

    ev = client.wait_evaluation(ev, timeout=1800, poll_interval=0.5, on_update=show)
    print()
    if ev.state != "SUCCEEDED":
        raise SystemExit(f"{what} ended {ev.state}: {ev.error}")
    return ev


def p_text(p: float, resamples: int = 0) -> str:
    if p == 0 and resamples:
        return f"< {1 / resamples:.3g}"
    return f"{p:.3g}"


def comparison_table(ev, a: str, b: str) -> str:
    c = ev.comparison(a, b)
    m = c.mcnemar
    lines = [
        f"| metric | {a} | {b} | {b} - {a} | 95% CI | p |",
        "|---|---:|---:|---:|---|---:|",
        f"| accuracy (McNemar, {m.method}; only v1 right {m.only_a_correct}, only v2 right {m.only_b_correct}) "
        f"| {m.a:.4f} | {m.b:.4f} | {m.difference:+.4f} | - | {p_text(m.p_value)} |",
    ]
    for bi in c.bootstrap:
        label = {"macro_f1": "macro-F1", "nll": "NLL"}.get(bi.metric, bi.metric)
        lines.append(
            f"| {label} (paired bootstrap, {bi.resamples} resamples) | {bi.a:.4f} | {bi.b:.4f} "
            f"| {bi.difference:+.4f} | [{bi.ci_low:+.4f}, {bi.ci_high:+.4f}] | {p_text(bi.p_value, bi.resamples)} |"
        )
    return "\n".join(lines)


MARKER = ".demo-iterate"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-label", type=int, default=8, help="v1 training queries per intent")
    ap.add_argument("--pool-per-label", type=int, default=12, help="pool queries per intent sent to Predict")
    ap.add_argument(
        "--eval-per-label", type=int, default=10, help="test queries per intent in the pinned eval set"
    )
    ap.add_argument("--epochs", type=int, default=6, help="v1 epochs")
    ap.add_argument("--v2-epochs", type=int, default=4, help="v2 epochs (continued from v1)")
    ap.add_argument(
        "--data-dir",
        default=".tuneserve/demo-iterate",
        help="wiped at the start when it is this demo's own (it holds the demo's marker file)",
    )
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    started = time.monotonic()

    train_rows, test_rows = read("train"), read("test")
    v1_rows = subset(train_rows, args.per_label, args.seed)
    in_slice = {t for t, _ in v1_rows}
    pool = subset([r for r in train_rows if r[0] not in in_slice], args.pool_per_label, args.seed + 1)
    eval_rows = subset(test_rows, args.eval_per_label, args.seed)
    print(
        f"Banking77: v1 slice {len(v1_rows)} queries ({args.per_label} per intent), feedback pool "
        f"{len(pool)} other training queries, pinned evaluation set {len(eval_rows)} test queries "
        f"({args.eval_per_label} per intent)."
    )

    # A fresh store, so the adapter's versions are 1 and 2; only a directory this demo made
    # (its marker file inside) is wiped: a directory with anything else in it is refused.
    data_dir = Path(args.data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).exists():
            raise SystemExit(
                f"{data_dir} is not empty and was not made by this demo: pass another --data-dir"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("made by examples/demo_iterate.py; wiped on its next run\n")
    with running_server(args.data_dir, "make demo-iterate") as (target, api_key):
        print(f"Serving after {time.monotonic() - started:.1f}s.\n")
        with Client(target, timeout=120, api_key=api_key) as client:
            # The pinned evaluation rows, uploaded once: v1's evaluation, v2's promotion gate
            # and the final comparison all score exactly these.
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["text", "category"])
            w.writerows(eval_rows)
            eval_ds = client.upload_dataset(
                buf.getvalue().encode(),
                format="csv",
                display_name="banking77 pinned eval",
                label_field="category",
            )
            print(f"Uploaded the pinned evaluation set: dataset {eval_ds.id} ({eval_ds.usable_rows} rows).")

            # 1. v1 on the small slice (a single 10% hold-out run; "auto" would cross-validate).
            job1 = client.train(
                NAME,
                v1_rows,
                epochs=args.epochs,
                validation_scheme="holdout",
                seed=args.seed,
                baseline=False,
            )
            job1 = wait_job(client, job1, "v1")
            v1 = f"{NAME}@{job1.adapter_version}"
            print(
                f"Trained {v1} in {job1.metrics['train_seconds']:.0f}s: validation accuracy {job1.metrics['accuracy']:.1%}."
            )

            # 2. v1 on the pinned test rows.
            ev1 = wait_eval(client, client.create_evaluation([v1], dataset=eval_ds.id), "evaluate v1")
            m1 = ev1.result(v1).metrics
            print(
                f"{v1} on {ev1.rows} test queries: accuracy {m1['accuracy']:.1%}, macro-F1 {m1['macro_f1']:.3f}, "
                f"ECE {m1['ece']:.3f} ({ev1.rows_per_second:.0f} rows/s in the worker).\n"
            )

            # 3. Serve the pool, answer every wrong prediction with the right label.
            wrong = 0
            for i in range(0, len(pool), 64):
                chunk = pool[i : i + 64]
                for p, (text, truth) in zip(client.predict(NAME, [t for t, _ in chunk]), chunk):
                    if p.label != truth:
                        client.submit_feedback(p.prediction_id, label=truth, input=text)
                        wrong += 1
            print(
                f"Predict on {len(pool)} pool queries: {len(pool) - wrong} right, {wrong} wrong; "
                f"feedback with the right label recorded on all {wrong} wrong ones."
            )
            stats = client.get_adapter(NAME).versions[-1].feedback
            if stats is not None:
                print(
                    f"  GetAdapter: {v1} feedback answered {stats.answered}, marked correct {stats.correct}."
                )
            export = client.export_feedback(v1, display_name="banking77 v1 corrections")
            report = export.dataset.report
            print(
                f"Exported the feedback: dataset {export.dataset.id}, {export.rows} rows "
                f"({export.skipped} skipped, {export.conflicts_with_training} conflicting with v1's training labels)."
            )
            if report is not None:
                print(
                    f"  data report: {report.total_rows} rows, {report.usable_rows} usable, {len(report.labels)} labels, "
                    f"imbalance {report.imbalance_ratio:.1f}, exact duplicates {report.exact_duplicates}, "
                    f"near duplicates {report.near_duplicates}, ok={report.ok}"
                )
                for issue in report.issues:
                    print(f"  {issue.severity}: {issue.code}: {issue.message}")
                if not report.ok:
                    print("  (alone, Train would refuse these rows; v2 trains on them with the v1 slice.)")

            # 4. v2 from v1. Train takes inline rows or one dataset, not both; the v1 slice plus
            # the corrections (read back from the server's feedback) keeps what v1 learned.
            corrections = [(f.input, f.label) for f in client.list_feedback(v1) if f.label]
            job2 = client.train(
                NAME,
                v1_rows + corrections,
                init_from=v1,
                epochs=args.v2_epochs,
                validation_scheme="holdout",
                seed=args.seed,
                baseline=False,
                promotion="if_better",
                promotion_eval_dataset=eval_ds.id,
            )
            print(
                f"\nSubmitted v2 from {job2.init_from or v1}: {len(v1_rows)} slice + {len(corrections)} corrected "
                f"queries, promotion if_better on dataset {eval_ds.id}."
            )
            job2 = wait_job(client, job2, "v2")
            v2 = f"{NAME}@{job2.adapter_version}"

            # 5. The decision, what the bare name serves, and the comparison.
            r = job2.promotion_result
            print(f"\nPromotion of {v2} (if_better, metric {r.metric or 'accuracy'}):")
            print(
                f"  promoted: {r.promoted}; {v2} {r.new_score:.4f} vs {NAME}@{r.compared_version} "
                f"{r.current_score:.4f} on {r.eval_examples} rows of dataset {r.eval_dataset_id}"
            )
            print(f"  reason: {r.reason}")
            adapter = client.get_adapter(NAME)
            [probe] = client.predict(NAME, [eval_rows[0][0]])
            print(
                f'Predict("{NAME}") now serves {NAME}@{adapter.default_version} '
                f"(aliases {adapter.aliases}); e.g. {eval_rows[0][0]!r} -> {probe.label}."
            )

            ev = wait_eval(
                client,
                client.create_evaluation([v1, v2], dataset=eval_ds.id, seed=args.seed),
                "compare v1 v2",
            )
            print(f"\n{v1} vs {v2} on the same {ev.rows} test queries:\n")
            print(comparison_table(ev, v1, v2))
    print(f"\nDemo done in {time.monotonic() - started:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
