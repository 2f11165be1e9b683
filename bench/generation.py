"""Generation through the service vs. plain in-process `model.generate`, on SmolLM2-135M-Instruct.

Four LoRA adapters (rank 8 on the default llama targets, random factors of a realistic size)
are written through the real stores (job store + adapter store, as the worker publishes
them). Then, in one run:

* in-process: the base model with one adapter under peft, `model.generate` (greedy) on the
  8 prompts one at a time (batch 1) and all at once (batch 8, left-padded); time to first
  token = `generate(max_new_tokens=1)` at batch 1;
* service: a `tuneserve api` process (its own 2 torch threads, like the in-process run),
  streaming the same prompts through the real client: 1 stream at a time and 8 concurrent
  streams, over 1 adapter and over 4 adapters (rows of different adapters share each decode
  step). Time to first token = from the call to the first text delta.

Tokens/s counts generated tokens (the service's completion_tokens, the in-process outputs up
to EOS) over wall time. The goals in the issue: 8 streams over 4 adapters >= 0.8x in-process
batch-8 with one adapter, and TTFT overhead <= 20 ms. Run under the heavy-job lock:

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/generation.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from harness import DOCS, code_version, cpu_model, free_port, log, write_docs

SECTION = "## Generation: streams vs. in-process generate (bench/generation.py)"
NAMESPACE = "bench"
PROMPTS = [
    "My card never arrived. What should I do?",
    "Write two sentences about the ocean.",
    "How do I reset my password?",
    "Explain what a neural network is in simple words.",
    "Give me three tips for a job interview.",
    "What is the capital of Italy, and what is it known for?",
    "Describe a sunset to someone who has never seen one.",
    "Why is exercise good for health?",
]


def publish_adapters(data_dir: Path, count: int, rank: int) -> list[str]:
    """`count` causal-LM adapters with random LoRA factors, published through the real stores."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneserve_server.domain.jobs import (
        CausalExample,
        Hyperparameters,
        JobSpec,
        TaskType,
    )
    from tuneserve_server.domain.records import AdapterVersionRecord
    from tuneserve_server.modeling import (
        ADAPTER_META,
        AdapterMeta,
        default_target_modules,
        resolve_base_model,
    )
    from tuneserve_server.modeling_lm import load_causal_lm
    from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
    from tuneserve_server.storage.sqlite_store import SqliteStore

    source = resolve_base_model("smollm2")
    _, lm = load_causal_lm(source.path, "cpu", data_dir / "models")
    targets = default_target_modules(lm)
    model = get_peft_model(
        lm, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
    )
    store = SqliteStore(data_dir / "jobs.db")
    adapters = LocalAdapterStore(data_dir / "adapters")
    names = []
    for i in range(count):
        name = f"gen-a{i}"
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:  # small: the adapter nudges the model, it does not wreck it
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.002)
        spec = JobSpec(
            NAMESPACE,
            name,
            TaskType.CAUSAL_LM,
            f"bench-{uuid.uuid4().hex}",
            (CausalExample("q", "a"),),
            (),
            Hyperparameters(),
        )
        job, _ = store.create_job(spec)
        claimed = store.claim_job("bench-generation", 3600)
        assert claimed is not None and claimed[0].id == job.id
        staged = adapters.staging_dir()
        model.save_pretrained(str(staged))
        meta = AdapterMeta(TaskType.CAUSAL_LM, source.model_id, (), rank, targets, {}, job.id)
        (staged / ADAPTER_META).write_text(meta.to_json())
        version = store.reserve_adapter_version(NAMESPACE, name)
        size = adapters.publish(staged, NAMESPACE, name, version)
        store.complete_job(
            job.id,
            "bench-generation",
            {},
            AdapterVersionRecord(
                namespace=NAMESPACE,
                name=name,
                version=version,
                job_id=job.id,
                task=TaskType.CAUSAL_LM,
                base_model=source.model_id,
                labels=(),
                metrics={},
                lora_rank=rank,
                size_bytes=size,
                created_at=job.created_at,
            ),
        )
        names.append(name)
    store.close()
    return names


def in_process(
    data_dir: Path, adapter: str, max_new: int, threads: int, device: str = "cpu"
) -> dict[str, float]:
    """The baseline: the published adapter under peft on the base model, plain generate."""
    import torch
    from peft import PeftModel

    from tuneserve_server.modeling import resolve_base_model
    from tuneserve_server.modeling_lm import (
        eos_token_ids,
        load_causal_lm,
        render_prompt,
    )

    torch.set_num_threads(threads)
    source = resolve_base_model("smollm2")
    tok, lm = load_causal_lm(source.path, device, data_dir / "models")
    model = PeftModel.from_pretrained(lm, str(data_dir / "adapters" / NAMESPACE / adapter / "1")).eval()
    eos = eos_token_ids(tok, lm)
    encoded = [tok(render_prompt(tok, [("user", p)]), add_special_tokens=False)["input_ids"] for p in PROMPTS]

    def gen(rows: list[list[int]], n: int) -> int:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        tokens = 0
        for row in out[:, width:].tolist():
            for t in row:
                if t in eos:
                    break
                tokens += 1
        return tokens

    gen(encoded[:1], 4)  # warm-up
    ttft = []
    for r in encoded:
        t0 = time.perf_counter()
        gen([r], 1)
        ttft.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    tokens1 = sum(gen([r], max_new) for r in encoded)
    b1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens8 = gen(encoded, max_new)
    b8 = time.perf_counter() - t0
    return {
        "b1_tps": tokens1 / b1,
        "b8_tps": tokens8 / b8,
        "ttft_ms": statistics.median(ttft) * 1000,
        "b1_tokens": tokens1,
        "b8_tokens": tokens8,
    }


def through_service(target: str, adapters: list[str], streams: int, max_new: int) -> dict[str, float]:
    """The 8 prompts as streams, `streams` at a time, adapters assigned round-robin."""
    from tuneserve_client import Client

    client = Client(target, timeout=300, namespace=NAMESPACE)
    ttft: list[float] = []
    tokens = 0
    lock = threading.Lock()
    jobs = list(enumerate(PROMPTS))

    def one(i: int, prompt: str) -> None:
        nonlocal tokens
        t0 = time.perf_counter()
        first = None
        stream = client.stream(adapters[i % len(adapters)], prompt, max_new_tokens=max_new)
        for _ in stream:
            if first is None:
                first = time.perf_counter() - t0
        with lock:
            ttft.append(first if first is not None else time.perf_counter() - t0)
            tokens += stream.final.completion_tokens

    def lane(k: int) -> None:
        for i, prompt in jobs[k::streams]:
            one(i, prompt)

    client.generate(adapters[0], "warm up", max_new_tokens=2)
    for name in adapters:  # load every adapter before timing
        client.generate(name, "hi", max_new_tokens=1)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lane, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client.close()
    return {"tps": tokens / wall, "ttft_ms": statistics.median(ttft) * 1000, "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, in-process and in the server")
    ap.add_argument("--device", default="cpu", help="torch device, in-process and in the server (cpu, cuda)")
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to rewrite")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--save-json", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="tuneserve-bench-generation-"))
    data_dir = work / "data"
    t_start = time.monotonic()
    names = publish_adapters(data_dir, 4, rank=8)
    log(f"published {len(names)} adapters in {time.monotonic() - t_start:.0f}s")

    base = in_process(data_dir, names[0], args.max_new_tokens, args.threads, args.device)
    log(f"in-process: {base}")

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    server_log = open(work / "api.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneserve_server.cli",
            "api",
            # Explicitly no auth: this measures serving, not authentication
            # (bench/auth_overhead.py measures what a key costs per call).
            "--auth",
            "none",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--base-model",
            "smollm2",
            "--torch-threads",
            str(args.threads),
            "--device",
            args.device,
            "--metrics-port",
            "0",
            "--max-new-tokens-limit",
            "512",
            "--generation-batch-rows",
            "16",
        ],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
        from demo import wait_serving

        wait_serving(f"127.0.0.1:{port}", server, timeout=300)
        runs = {}
        for streams, n_adapters in ((1, 1), (1, 4), (8, 1), (8, 4)):
            runs[(streams, n_adapters)] = through_service(
                f"127.0.0.1:{port}", names[:n_adapters], streams, args.max_new_tokens
            )
            log(f"service {streams} stream(s) over {n_adapters} adapter(s): {runs[(streams, n_adapters)]}")
    finally:
        server.terminate()
        server.wait(60)
        server_log.close()
    shutil.rmtree(work, ignore_errors=True)  # ~0.6 GB: the float copy of the model, adapters

    goal_tps = runs[(8, 4)]["tps"] / base["b8_tps"]
    ttft_over = runs[(1, 1)]["ttft_ms"] - base["ttft_ms"]
    rows = [
        ("in-process generate, batch 1, 1 adapter", base["b1_tps"], base["ttft_ms"], "1.00x of batch 1"),
        ("in-process generate, batch 8, 1 adapter", base["b8_tps"], None, "1.00x of batch 8"),
    ]
    for (streams, n_adapters), r in runs.items():
        ref = base["b1_tps"] if streams == 1 else base["b8_tps"]
        rows.append(
            (
                f"service, {streams} stream{'s' if streams > 1 else ''}, {n_adapters} adapter"
                f"{'s' if n_adapters > 1 else ''}",
                r["tps"],
                r["ttft_ms"],
                f"{r['tps'] / ref:.2f}x of batch {streams}",
            )
        )
    table = ["| run | tokens/s | median TTFT (ms) | vs. in-process |", "|---|---:|---:|---:|"]
    for label, tps, ttft, ratio in rows:
        table.append(f"| {label} | {tps:.1f} | {'' if ttft is None else f'{ttft:.0f}'} | {ratio} |")
    text = "\n".join(table)
    print(text)
    print(f"goal 1: 8 streams over 4 adapters = {goal_tps:.2f}x in-process batch 8 (goal >= 0.8x)")
    print(f"goal 2: TTFT overhead (1 stream, 1 adapter) = {ttft_over:+.0f} ms (goal <= 20 ms)")
    if args.save_json:
        args.save_json.write_text(
            json.dumps({"in_process": base, "service": {f"{k[0]}x{k[1]}": v for k, v in runs.items()}})
        )
    if not args.no_docs:
        body = f"""SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to float32), greedy, up to
{args.max_new_tokens} new tokens for each of {len(PROMPTS)} chat prompts; four rank-8 LoRA
adapters on q/k/v/o_proj. In-process: peft `model.generate` with one adapter. Service: one
`tuneserve api` process, prompts streamed through the Python client (adapters round-robin).
{args.threads} torch threads on each side, measured one after the other in the same run.
Machine: {cpu_model()}, {os.cpu_count()} cores; 1-minute load average {load_before:.2f} before,
{os.getloadavg()[0]:.2f} after (other jobs share this box: compare ratios, not absolute speeds).
Code: {code_version()}.
Command: `flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/generation.py`.

{text}

* Goal 1 (8 streams over 4 adapters >= 0.8x in-process batch-8 generate with one adapter):
  **{goal_tps:.2f}x** — {"met" if goal_tps >= 0.8 else "not met"}.
* Goal 2 (time-to-first-token overhead of gRPC + scheduling <= 20 ms over in-process):
  **{ttft_over:+.0f} ms** — {"met" if ttft_over <= 20 else "not met"}. The service's TTFT
  includes the chat-template rendering and tokenisation on the torch thread, the batcher's
  wait for company (max_batch_wait_ms) and the first streamed message.
* The service decodes every stream in one continuously batched loop with a KV cache: rows
  join between decode steps and leave as they finish, each with its own adapter (the
  gathered LoRA bank: one gathered product per layer) and sampling settings; the in-process batch-8 baseline pads every row
  to the batch's longest answer instead.
"""
        write_docs(args.docs, SECTION, body)
        log(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
