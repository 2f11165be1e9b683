"""Tenant B's Predict latency while tenant A floods the server: how fairly the batcher shares
forward passes across namespaces.

One run: start a real `tuneserve serve` (the packaged MiniLM, `--auth none`, one torch
thread) in a temporary data dir, train one small Banking77 adapter in each of the namespaces
`team-a` and `team-b`
through the client, then time tenant B's 1-text Predict calls, one after another:

  - alone (--calls): nobody else calls;
  - while A floods (--flood-calls): --flooders threads in namespace `team-a` each send 256-text Predict
    calls to A's own adapter back to back (--flooders x 256 rows stays within the default
    queued_predict_rows quota, so A is slowed by nothing but its share).

The printed table holds B's p50/p99 both ways, A's rows/s and how many of A's calls were
refused. Run it once per tree with --label (e.g. `before` against a checkout of the old
code on PYTHONPATH, `after` against this one); each run adds its row to --results (JSON),
and the docs section ("## Tenant fairness ...", docs/benchmarks.md) is rewritten from every
row there unless --no-docs. Under 2 minutes per run on 2 CPU cores.

    PYTHONPATH=server:client .venv/bin/python bench/fairness.py --label after
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DOCS,
    Server,
    code_version,
    cpu_model,
    free_port,
    log,
    percentile,
    read_csv,
    training_subset,
    write_docs,
)

SECTION = "## Tenant fairness: one tenant's Predict while another floods (bench/fairness.py)"
ADAPTER = "b-intents"
FLOOD_ROWS = 256


class FairnessServer(Server):
    """harness.Server's child process, with `--auth none` (auth is not what is measured) and
    one torch thread."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.log_path = data_dir.parent / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.cmd = [
            sys.executable,
            "-m",
            "tuneserve_server.cli",
            "serve",
            *("--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)),
            *("--torch-threads", "1", "--auth", "none", "--grace-s", "5"),
            *("--worker-poll-s", "0.5", "--registry-poll-s", "0.5"),
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        log(f"started server pid {self.proc.pid} on {self.target}")


def timed_calls(client, ref: str, texts: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        client.predict(ref, [texts[i % len(texts)]])
        out.append(time.perf_counter() - start)
    return out


def run(args: argparse.Namespace) -> dict[str, object]:
    from tuneserve_client import Client
    from tuneserve_client.errors import TuneserveError

    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-fairness-"))
    server = FairnessServer(tmp / "data", free_port())
    try:
        server.wait_serving()
        texts = [t for t, _ in read_csv("test")]
        examples = training_subset(4, 12)
        refs = {}
        for ns in ("team-a", "team-b"):  # one small adapter per tenant
            with Client(server.target, namespace=ns, timeout=120) as c:
                job = c.wait(c.train(ADAPTER, examples, max_steps=4, batch_size=16, seed=0), timeout=300)
                if job.state != "SUCCEEDED":
                    raise RuntimeError(f"training ended {job.state}: {job.error}")
                refs[ns] = f"{ADAPTER}@{job.adapter_version}"
        ref = refs["team-b"]
        with Client(server.target, namespace="team-b", timeout=120) as b:
            timed_calls(b, ref, texts, 5)  # warm: the adapter resident
            alone = timed_calls(b, ref, texts, args.calls)
            log(f"B alone: p50 {percentile(alone, 50) * 1000:.1f} ms")

            stop = threading.Event()
            counts = {"rows": 0, "refused": 0}
            lock = threading.Lock()

            def flood(i: int) -> None:
                batch = [texts[(i * FLOOD_ROWS + j) % len(texts)] for j in range(FLOOD_ROWS)]
                with Client(server.target, namespace="team-a", timeout=120) as a:
                    while not stop.is_set():
                        try:
                            a.predict(refs["team-a"], batch)
                            with lock:
                                counts["rows"] += FLOOD_ROWS
                        except TuneserveError as err:
                            with lock:
                                counts["refused"] += 1
                                counts.setdefault("why", str(err)[:200])
                            time.sleep(0.05)

            threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(args.flooders)]
            for t in threads:
                t.start()
            time.sleep(args.settle_s)
            start = time.perf_counter()
            with lock:
                rows_before = counts["rows"]
            flooded = timed_calls(b, ref, texts, args.flood_calls)
            window = time.perf_counter() - start
            with lock:
                a_rows = counts["rows"] - rows_before
            stop.set()
            for t in threads:
                t.join(timeout=120)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "label": args.label,
        "code": code_version(),
        "calls": args.calls,
        "flood_calls": args.flood_calls,
        "flooders": args.flooders,
        "alone_p50_ms": percentile(alone, 50) * 1000,
        "alone_p99_ms": percentile(alone, 99) * 1000,
        "flood_p50_ms": percentile(flooded, 50) * 1000,
        "flood_p99_ms": percentile(flooded, 99) * 1000,
        "a_rows_per_s": a_rows / window,
        "a_refused": counts["refused"],
        "a_refused_why": counts.get("why", ""),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| code | B alone p50 | B alone p99 | B while A floods p50 | B while A floods p99 | A rows/s | A refused |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['alone_p50_ms']:.0f} ms | {r['alone_p99_ms']:.0f} ms | "
            f"**{r['flood_p50_ms']:.0f} ms** | **{r['flood_p99_ms']:.0f} ms** | "
            f"{r['a_rows_per_s']:.0f} | {r['a_refused']} |"
        )
    return "\n".join(lines)


def docs_body(results: list[dict]) -> str:
    """The docs section's body from every row of --results."""
    first = results[0]
    # One of A's 256-row forwards, from A's throughput under the flood; B's flooded latency
    # in those units says how many of A's passes B waited for.
    waits = "; ".join(
        f"`{r['label']}`: one forward about {FLOOD_ROWS / r['a_rows_per_s']:.1f} s, B's p50 "
        f"{r['flood_p50_ms'] / 1000 / (FLOOD_ROWS / r['a_rows_per_s']):.1f} and p99 "
        f"{r['flood_p99_ms'] / 1000 / (FLOOD_ROWS / r['a_rows_per_s']):.1f} of them"
        for r in results
        if r["a_rows_per_s"] > 0
    )
    codes = "; ".join(f"`{r['label']}`: {r['code']}" for r in results)
    return f"""{table(results)}

- **Server:** `tuneserve serve` on localhost, the packaged MiniLM, float32, one torch
  thread, default batching (`max_batch_rows` 64: each 256-text call is a forward pass of its
  own), `--auth none`.
- **Workload:** tenant B (`team-b`) calls its own adapter with one text, {first["calls"]}
  calls one after another alone, then {first["flood_calls"]} while tenant A (`team-a`) runs
  {first["flooders"]} callers each sending 256-text calls to its own adapter back to back.
  With so few calls, p99 is about the slowest call.
- **Rows:** `before` is the single FIFO queue (a request waits behind every row queued
  before it: with {first["flooders"]} callers, up to {first["flooders"]} of A's 256-row
  calls); `after` forms batches round-robin across namespaces, so B's row rides in the
  next forward pass. A forward pass is not interrupted: B still waits for the one in
  flight, so "after" is expected near one 256-row forward (B calls again as soon as it is
  answered, just as A's next pass starts). Each row is one run of
  `bench/fairness.py --label ...` with that tree's server on PYTHONPATH.
- **In A's forwards** (256 / A rows/s): {waits}.
- **Code:** {codes}.
- **Machine:** {cpu_model()}, {os.cpu_count()} CPUs, shared with other work (a noisy
  neighbour moves every column).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="this tree", help="the row's name (e.g. before / after)")
    ap.add_argument("--calls", type=int, default=30, help="B's timed calls, alone and under the flood")
    ap.add_argument("--flood-calls", type=int, default=6, help="B's timed calls while A floods")
    ap.add_argument("--flooders", type=int, default=2, help="A's concurrent 256-text callers")
    ap.add_argument("--settle-s", type=float, default=2.0, help="flood time before B is timed")
    ap.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "tuneserve-fairness.json")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)

    result = run(args)
    previous = json.loads(args.results.read_text()) if args.results.exists() else []
    results = [r for r in previous if r["label"] != args.label] + [result]
    args.results.write_text(json.dumps(results, indent=1))
    print(table(results))
    if not args.no_docs:
        body = docs_body(results)
        write_docs(args.docs, SECTION, body)
        log(f"rewrote {SECTION!r} in {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
