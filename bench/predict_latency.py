"""Predict latency through gRPC next to the same model called in-process.

One run: start a real `tuneserve serve` on a free localhost port with a temporary data dir,
train one small Banking77 adapter through the client, load the same base model and the
same adapter files from the data dir's adapter store into this process, then time
sequential calls (1 text, and a batch of 32) two ways:

  - gRPC: `Client.predict` against the server;
  - in-process: the same forward called directly in Python (tokenizer -> peft model ->
    mean pool -> head -> softmax, as the server's engine runs it).

The two sides never run at the same time: they take turns in blocks (the server is idle,
with no requests, while the in-process side runs), so background load on a shared machine
lands on both sides alike. Then print a markdown table of p50/p95 and the gRPC/in-process
ratio, and rewrite the "## Predict latency" section of docs/benchmarks.md. Both sides use
the same torch thread count (--threads, default 1). The server process and temp dir are removed even on failure.

    .venv/bin/python bench/predict_latency.py            # what `make bench` runs
    .venv/bin/python bench/predict_latency.py --no-docs  # print only
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
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

# bench/harness.py: bench/ is already on sys.path when run as `python bench/predict_latency.py`;
# the insert covers other ways of loading this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DOCS,
    Server,
    cpu_model,
    free_port,
    log,
    read_csv,
    summarize,
    training_subset,
    write_docs,
)

SECTION = "## Predict latency (bench/predict_latency.py)"
ADAPTER = "bench-intents"
NAMESPACE = "default"
BATCH = 32


# --------------------------------------------------------------------------- helpers
def time_interleaved(
    sides: dict[str, Callable[[Sequence[str]], object]],
    inputs: list[list[str]],
    warmup: int,
    block: int,
) -> dict[str, list[float]]:
    """Every side gets `warmup` untimed calls, then the inputs are split into blocks of
    `block` calls; each block is timed on every side in turn (order alternating per block),
    one call at a time. Returns each side's samples in seconds."""
    for fn in sides.values():
        for texts in inputs[:warmup]:
            fn(texts)
    names = list(sides)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r, start in enumerate(range(0, len(inputs), block)):
        chunk = inputs[start : start + block]
        for name in names if r % 2 == 0 else reversed(names):
            fn = sides[name]
            fn(chunk[0])  # one untimed call after switching sides
            for texts in chunk:
                t0 = time.perf_counter()
                fn(texts)
                samples[name].append(time.perf_counter() - t0)
    return samples


def workloads(n_single: int, n_batch: int) -> tuple[list[list[str]], list[list[str]]]:
    """The same inputs for both sides: single test texts in file order, and batches of 32
    consecutive test texts (wrapping around), so every call differs but both sides see the
    same sequence."""
    texts = [t for t, _ in read_csv("test")]
    single = [[texts[i % len(texts)]] for i in range(n_single)]
    batches = [[texts[(i * BATCH + j) % len(texts)] for j in range(BATCH)] for i in range(n_batch)]
    return single, batches


# --------------------------------------------------------------------------- in-process
class InProcessModel:
    """The server's forward for one adapter, without the server: base encoder wrapped by peft
    with the engine's zero 'anchor' adapter, the trained adapter loaded into a slot, and the
    call made with `adapter_names=[slot] * n` exactly as engine/classifier.py does it."""

    def __init__(self, adapter_dir: Path, device: str = "cpu", max_length: int = 128) -> None:
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model

        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

        from tuneserve_server.modeling import (
            AdapterMeta,
            default_target_modules,
            load_encoder,
            load_head,
            resolve_base_model,
        )

        self.torch = torch
        self.device = device
        self.max_length = max_length
        source = resolve_base_model("minilm")
        self.tokenizer, encoder = load_encoder(source, device)
        anchor = LoraConfig(r=1, target_modules=[default_target_modules(encoder)[0]], init_lora_weights=True)
        self.model = get_peft_model(encoder, anchor, adapter_name="anchor")  # peft needs one adapter active
        self.slot = "s0"
        self.model.load_adapter(str(adapter_dir), adapter_name=self.slot)
        self.model.eval()
        self.meta = AdapterMeta.read(adapter_dir)
        if self.meta.base_model != source.model_id:
            raise RuntimeError(f"adapter was trained on {self.meta.base_model}, not {source.model_id}")
        self.head = load_head(adapter_dir, device)

    def predict(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        from tuneserve_server.modeling import mean_pool

        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**enc, adapter_names=[self.slot] * len(texts)).last_hidden_state
            pooled = mean_pool(hidden, enc["attention_mask"])
            logits = self.head(pooled).float() / self.meta.temperature
            probs = torch.softmax(logits, -1).cpu().tolist()
        labels = self.meta.labels
        out = []
        for p in probs:
            i = max(range(len(p)), key=p.__getitem__)
            out.append((labels[i], p[i]))
        return out


# --------------------------------------------------------------------------- report
def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| case | gRPC p50 (ms) | gRPC p95 (ms) | in-process p50 (ms) | in-process p95 (ms) "
        "| ratio (gRPC/in-process p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, r in results.items():
        g, p = r["grpc"], r["inproc"]
        lines.append(
            f"| {case} | {g['p50']:.2f} | {g['p95']:.2f} | {p['p50']:.2f} | {p['p95']:.2f} "
            f"| {g['p50'] / p['p50']:.2f}x |"
        )
    return "\n".join(lines)


def means_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| case | calls (gRPC / in-process) | gRPC mean (ms) | in-process mean (ms) | gRPC - in-process p50 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, r in results.items():
        g, p = r["grpc"], r["inproc"]
        lines.append(
            f"| {case} | {g['n']} / {p['n']} | {g['mean']:.2f} | {p['mean']:.2f} | {g['p50'] - p['p50']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, for the server (--torch-threads) and in-process (default 1)",
    )
    ap.add_argument("--n-single", type=int, default=200, help="timed 1-text calls per side")
    ap.add_argument("--n-batch", type=int, default=32, help="timed 32-text calls per side")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per side before each case")
    ap.add_argument(
        "--block-single",
        type=int,
        default=10,
        help="1-text calls per turn; the sides take turns block by block",
    )
    ap.add_argument("--block-batch", type=int, default=4, help="32-text calls per turn")
    ap.add_argument("--labels", type=int, default=10, help="Banking77 labels in the training subset")
    ap.add_argument("--per-label", type=int, default=20, help="training examples per label")
    ap.add_argument("--max-steps", type=int, default=30, help="training steps for the adapter")
    ap.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="server --max-batch-wait-ms (default: the server's own default)",
    )
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to rewrite")
    ap.add_argument("--no-docs", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be at least 1 (the in-process side must match the server)")

    # SIGTERM (e.g. from a CI timeout) unwinds through the finally below like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import grpc

    from tuneserve_client import Client
    from tuneserve_server.config import Settings

    started = time.monotonic()
    load_before = os.getloadavg()
    single, batches = workloads(args.n_single, args.n_batch)
    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-bench-"))
    data_dir = tmp / "data"
    server: Server | None = None
    results: dict[str, dict[str, dict[str, float]]] = {"1 text": {}, f"batch of {BATCH}": {}}
    try:
        # ---- server up, adapter trained --------------------------------------------------
        server = Server(data_dir, free_port(), args.threads, args.batch_wait_ms)
        server.wait_serving()
        log(f"server SERVING after {time.monotonic() - started:.1f}s")
        examples = training_subset(args.labels, args.per_label)
        # One channel for the client and for the bare round-trip probe below.
        with (
            grpc.insecure_channel(server.target) as channel,
            Client(server.target, timeout=60, channel=channel) as client,
        ):
            job = client.train(
                ADAPTER, examples, max_steps=args.max_steps, batch_size=16, validation_fraction=0.1, seed=0
            )
            job = client.wait(job, timeout=300, poll_interval=0.3)
            if job.state != "SUCCEEDED":
                raise RuntimeError(f"training job {job.id} ended {job.state}: {job.error}")
            log(
                f"trained {ADAPTER}@{job.adapter_version} on {len(examples)} examples "
                f"({job.step} steps) after {time.monotonic() - started:.1f}s"
            )
            adapter_ref = f"{ADAPTER}@{job.adapter_version}"
            adapter_dir = data_dir / "adapters" / NAMESPACE / ADAPTER / str(job.adapter_version)

            # ---- the in-process copy of the same model, in this process ------------------
            import torch

            torch.set_num_threads(args.threads)
            model = InProcessModel(adapter_dir)

            def grpc_predict(texts: Sequence[str]) -> object:
                return client.predict(adapter_ref, texts)

            # The floor under any Predict: one bare gRPC round trip (health Check) on this channel.
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health_stub = health_pb2_grpc.HealthStub(channel)
            health_req = health_pb2.HealthCheckRequest(service="")
            for _ in range(20):
                health_stub.Check(health_req, timeout=5)
            rtt = []
            for _ in range(200):
                t0 = time.perf_counter()
                health_stub.Check(health_req, timeout=5)
                rtt.append(time.perf_counter() - t0)
            results_rtt = summarize(rtt)

            check = batches[0]
            grpc_labels = [p.label for p in client.predict(adapter_ref, check)]
            inproc_labels = [label for label, _ in model.predict(check)]
            mismatches = sum(a != b for a, b in zip(grpc_labels, inproc_labels, strict=True))

            # ---- timed: the two sides take turns, one block at a time, never overlapping.
            # While the in-process side runs, the server has no requests (idle); the turns
            # spread background load on a shared box evenly over both sides.
            for case, inputs, block in (
                ("1 text", single, args.block_single),
                (f"batch of {BATCH}", batches, args.block_batch),
            ):
                samples = time_interleaved(
                    {"grpc": grpc_predict, "inproc": model.predict}, inputs, args.warmup, block
                )
                for side, values in samples.items():
                    results[case][side] = summarize(values)
                log(f"{case}: done after {time.monotonic() - started:.1f}s")

        rc = server.stop()
        log(f"server stopped (exit code {rc})")
    except BaseException:
        if server is not None:
            server.stop()
            tail = server.log_tail()
            if tail:
                print(f"--- server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    import torch

    md = table(results)
    extra = means_table(results)
    threads_note = f"{args.threads} (server `--torch-threads {args.threads}`, in-process `torch.set_num_threads({args.threads})`)"
    wait_note = (
        f"`--max-batch-wait-ms {args.batch_wait_ms:g}`"
        if args.batch_wait_ms is not None
        else f"server default `--max-batch-wait-ms` ({Settings().max_batch_wait_ms:g} ms)"
    )
    print()
    print(md)
    print()
    print(extra)
    print()
    print(f"torch threads: {threads_note}; batcher: {wait_note}")
    print(
        f"bare gRPC round trip (health Check, same channel): p50 {results_rtt['p50']:.2f} ms, "
        f"p95 {results_rtt['p95']:.2f} ms"
    )
    print(f"label agreement gRPC vs in-process on one batch of {BATCH}: {BATCH - mismatches}/{BATCH}")
    print(
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; "
        f"total runtime {time.monotonic() - started:.0f}s"
    )

    if not args.no_docs:
        body = f"""\
Measured {dt.date.today().isoformat()} on a {os.cpu_count()}-core CPU machine ({cpu_model()}),
Python {platform.python_version()}, torch {torch.__version__}. One run of the script. The box
is shared with other jobs (1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f}
after, on {os.cpu_count()} cores): p95 mostly measures that background load, and the ratio
moves by roughly +-10% from run to run; read it as "about this much", not to the digit.

- **Torch threads:** {threads_note}.
- **Server:** `tuneserve serve` on localhost (API + trainer worker, worker idle while
  measuring), {wait_note}; client: `tuneserve_client.Client.predict("{ADAPTER}@N", texts)`,
  one call at a time.
- **In-process:** the same base model and the same adapter files read from the data dir's
  adapter store (`adapters/default/{ADAPTER}/N/`), run as the engine runs them: tokenizer,
  peft model with `adapter_names`, mean pooling, head, softmax, results to Python.
- **Sequencing:** the sides never overlap. They take turns in blocks ({args.block_single}
  1-text calls, {args.block_batch} batch calls; order alternating; one untimed call after each
  switch), the server idle while the in-process side runs, so drifting background load
  hits both alike.
- **Workload:** a LoRA adapter trained through the service ({args.labels} Banking77 labels x
  {args.per_label} examples, {args.max_steps} steps); texts from `examples/data/banking77/test.csv`,
  the same sequence for both sides; {args.warmup} untimed warm-up calls per side and case, then
  {args.n_single} timed 1-text calls and {args.n_batch} timed {BATCH}-text calls per side.
  Label agreement between the two sides on one batch: {BATCH - mismatches}/{BATCH}.
- **gRPC floor:** a bare round trip on the same channel (health `Check`, no model work)
  took p50 {results_rtt["p50"]:.2f} ms, p95 {results_rtt["p95"]:.2f} ms.
- **Reproduce:** `make bench` (runs `.venv/bin/python bench/predict_latency.py`; about
  {max(1, round((time.monotonic() - started) / 60))} min here).

{md}

{extra}
"""
        write_docs(args.docs, SECTION, body)
        log(f"wrote section to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
