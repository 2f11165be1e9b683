"""What issuing and storing prediction ids (FeedbackService) adds to a Predict call.

One run: a real `tuneserve serve` (the packaged MiniLM, one torch thread, SQLite) trains one
small Banking77 adapter through the client; then two `tuneserve api` processes on the same
data dir (same job store, same adapter files) serve it, one with prediction ids on (the
default), one with `--prediction-ids false`; the trainer gets no calls meanwhile. Then sequential Predict calls of 1 text and of 32 texts go to both
servers in turns: after --warmup untimed calls per side, each side's --calls timed calls are
split into --rounds blocks, taken in rotating order (one untimed call after each switch), so
background load on a shared machine lands on both alike.

With ids on, each row costs a 96-bit random id and an append to an in-memory queue on the
request path; the rows are written to the predictions table by a background task every
prediction_log_flush_s (0.2 s), in one transaction on a worker thread. That write still
takes CPU from the same process, so it is inside the measured latency when it overlaps a
call. Two in-process numbers show the parts alone: `PredictionLog.issue` per call, and one
batched `insert_predictions` of 512 rows on SQLite.

The table (p50 / p95 / mean and the ratio to ids off) is printed, and the "## Prediction ids
..." section of docs/benchmarks.md rewritten unless --no-docs.

    PYTHONPATH=server:client .venv/bin/python bench/feedback_overhead.py
    PYTHONPATH=server:client .venv/bin/python bench/feedback_overhead.py --no-docs  # print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
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
    summarize,
    training_subset,
    write_docs,
)

SECTION = "## Prediction ids for feedback: Predict with ids on and off (bench/feedback_overhead.py)"
ADAPTER = "fb-intents"


def interleave(
    sides: dict[str, Callable[[int], object]], calls: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Each side's `calls` timed calls in `rounds` blocks, the sides taking turns (rotating
    order, one untimed call after each switch); durations in seconds."""
    names = list(sides)
    for fn in sides.values():
        for i in range(warmup):
            fn(i)
    samples: dict[str, list[float]] = {n: [] for n in names}
    done = dict.fromkeys(names, 0)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = sides[name]
            fn(done[name])
            for _ in range(calls * (r + 1) // rounds - calls * r // rounds):
                t0 = time.perf_counter()
                fn(done[name])
                samples[name].append(time.perf_counter() - t0)
                done[name] += 1
    return samples


def in_process(repeats: int = 2000) -> dict[str, float]:
    """Microseconds per PredictionLog.issue call (1 and 32 rows), ms per 512-row insert."""
    import asyncio

    from tuneserve_server.domain.jobs import TaskType
    from tuneserve_server.services.prediction_log import PredictionLog, PredictionLogSettings
    from tuneserve_server.storage.sqlite_store import SqliteStore

    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-fbbench-"))
    store = SqliteStore(tmp / "jobs.db")
    out: dict[str, float] = {}
    try:
        plog = PredictionLog(store, PredictionLogSettings(max_pending=10**9))
        for rows in (1, 32):
            batch = [("card_arrival", 0.9, f"text {i}", None) for i in range(rows)]
            t0 = time.perf_counter()
            for _ in range(repeats):
                plog.issue("default", ADAPTER, 1, TaskType.CLASSIFICATION, batch)
            out[f"issue_{rows}_us"] = (time.perf_counter() - t0) / repeats * 1e6
        plog._pending.clear()
        times = []
        for _ in range(10):
            plog.issue("default", ADAPTER, 1, TaskType.CLASSIFICATION, [("a", 0.5, "t", None)] * 512)
            t0 = time.perf_counter()
            asyncio.run(plog.flush())
            times.append(time.perf_counter() - t0)
        out["insert_512_ms"] = sorted(times)[len(times) // 2] * 1000
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="timed calls per side")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per side first")
    ap.add_argument("--rounds", type=int, default=10, help="blocks each side's timed calls are split into")
    ap.add_argument("--threads", type=int, default=1, help="server --torch-threads")
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to rewrite")
    ap.add_argument("--no-docs", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tuneserve_client import Client

    started = time.monotonic()
    load_before = os.getloadavg()
    texts = [t for t, _ in read_csv("test")]
    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-fb-"))
    servers: list[Server] = []
    clients: list[Client] = []
    try:
        data = tmp / "data"
        ports = lambda: ("--metrics-port", str(free_port()), "--worker-metrics-port", str(free_port()))  # noqa: E731
        trainer = Server(data, free_port(), args.threads, extra=ports())
        servers.append(trainer)
        trainer.wait_serving()
        client_train = Client(trainer.target, timeout=120)
        clients.append(client_train)
        job = client_train.wait(
            client_train.train(ADAPTER, training_subset(4, 12), max_steps=4, batch_size=16, seed=0),
            timeout=300,
            poll_interval=0.3,
        )
        if job.state != "SUCCEEDED":
            raise RuntimeError(f"training ended {job.state}: {job.error}")
        ref = f"{ADAPTER}@{job.adapter_version}"
        # The two measured servers are alike: `tuneserve api` processes on the trainer's data dir.
        on = Server(data, free_port(), args.threads, role="api", extra=ports())
        servers.append(on)
        on.wait_serving()
        client_on = Client(on.target, timeout=120)
        clients.append(client_on)
        off = Server(
            data, free_port(), args.threads, role="api", extra=(*ports(), "--prediction-ids", "false")
        )
        servers.append(off)
        off.wait_serving()
        client_off = Client(off.target, timeout=120)
        clients.append(client_off)
        assert (
            client_on.predict(ref, ["x"])[0].prediction_id
            and not client_off.predict(ref, ["x"])[0].prediction_id
        )

        def side(client: Client, rows: int) -> Callable[[int], object]:
            def call(i: int) -> object:
                start = (i * rows) % (len(texts) - rows)
                return client.predict(ref, texts[start : start + rows])

            return call

        sides = {}
        for rows in (1, 32):
            sides[f"{rows} text{'s' if rows > 1 else ''}, ids off"] = side(client_off, rows)
            sides[f"{rows} text{'s' if rows > 1 else ''}, ids on"] = side(client_on, rows)
        samples = interleave(sides, args.calls, args.warmup, args.rounds)
        written = sum(
            v for k, v in on_metrics(on).items() if k.startswith("tuneserve_prediction_log_written_total")
        )
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    micro = in_process()
    load_after = os.getloadavg()
    runtime = time.monotonic() - started

    results = {name: summarize(v) for name, v in samples.items()}
    lines = [
        "| Predict | calls | p50 (ms) | p95 (ms) | mean (ms) | p50 on / off | mean on / off |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        base = results[name.replace("ids on", "ids off")]
        lines.append(
            f"| {name} | {r['n']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['mean']:.2f} | "
            f"{r['p50'] / base['p50']:.3f}x | {r['mean'] / base['mean']:.3f}x |"
        )
    md = "\n".join(lines)
    micro_line = (
        f"In-process parts: `PredictionLog.issue` {micro['issue_1_us']:.1f} µs for 1 row, "
        f"{micro['issue_32_us']:.1f} µs for 32 rows (on the request path); one batched write of "
        f"512 rows to SQLite {micro['insert_512_ms']:.1f} ms (median of 10; off the request path, "
        f"on a worker thread). The ids-on server wrote {written:.0f} rows during the run."
    )
    print(md)
    print(micro_line)
    if not args.no_docs:
        body = f"""\
Measured {dt.date.today().isoformat()}, one run of the script; the ratios are ids on over ids off.

{md}

{micro_line}

- **Servers:** two `tuneserve api` processes on the data dir of the `tuneserve serve` that
  trained the adapter (one SQLite job store, the same adapter files; the trainer idle):
  ids on (the default: `prediction_ids = true`, flush every 0.2 s) and
  `--prediction-ids false`, both the packaged MiniLM, float32,
  `--torch-threads {args.threads}`, `--auth none` (bench/auth_overhead.py measures auth).
- **Workload:** one LoRA adapter (Banking77, 4 labels x 12 examples, 4 steps, seed 0);
  Predict of 1 text and of 32 texts from `examples/data/banking77/test.csv`, one call at a
  time; {args.warmup} untimed warm-up calls per side, then {args.calls} timed calls per side
  in {args.rounds} blocks, the four sides taking turns block by block.
- **Reading it:** a ratio near 1.00x means issuing ids costs nothing measurable next to the
  forward pass; the in-process line gives the absolute cost of the parts. p95 mostly
  measures the background load of the shared machine.
- **Machine:** {cpu_model()}, {os.cpu_count()} CPUs, shared with other work (1-minute load
  average {load_before[0]:.2f} before, {load_after[0]:.2f} after); about
  {max(1, round(runtime / 60))} min for the whole run.
- **Code:** {code_version()}.
- **Reproduce:** `PYTHONPATH=server:client {command_as_run("feedback_overhead.py", sys.argv[1:])}`.
"""
        write_docs(args.docs, SECTION, body)
        log(f"wrote section to {args.docs}")
    return 0


def on_metrics(server: Server) -> dict[str, float]:
    """The API process's /metrics of `server` (its --metrics-port)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    port = server.cmd[server.cmd.index("--metrics-port") + 1]
    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


if __name__ == "__main__":
    sys.exit(main())
