"""Preference tuning (DPO) vs. instruction tuning (SFT) on the same data and base: optimiser
step time and the job's peak memory.

Each job runs in a fresh process (`--child sft|dpo`), the recipe the trainer worker runs on
SmolLM2-135M-Instruct (float32, CPU): SFT = CausalLMRecipe on the support_style prompts with
their house-format replies; DPO = PreferenceRecipe on the same prompts as preference pairs
(chosen = that reply, rejected = the base model's own reply, examples/data/support_style/
preference.jsonl). Same prompts, same batch size (in prompts), same LoRA rank and sequence
cap. Step times come from the recipe's progress callback (wall time between optimiser steps;
the first step is left out as warm-up); a DPO step in its first epoch also runs the reference
(adapter disabled) on pairs not yet cached, later epochs reuse the cache, so both are shown.
Peak RSS is the child's ru_maxrss; "after setup" is its RSS once the model is loaded and the
adapter attached, so the difference is what training adds (a second copy of the model would
add the weights again: about half a GB in float32).

    python bench/preference.py --steps 8 --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import harness

DATA = harness.ROOT / "examples" / "data" / "support_style"
SECTION = "## Preference tuning: DPO vs. SFT step time and memory (bench/preference.py)"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def child(kind: str, steps: int, batch: int, max_len: int, cache_dir: str) -> None:
    import torch

    from tuneserve_server.domain.jobs import (
        CausalExample,
        Hyperparameters,
        JobSpec,
        LoraSettings,
        OptimizerSettings,
        PreferenceExample,
        TaskType,
    )
    from tuneserve_server.modeling import resolve_base_model
    from tuneserve_server.training.causal_lm import CausalLMRecipe
    from tuneserve_server.training.preference import PreferenceRecipe
    from tuneserve_server.training.recipe import RecipeContext

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = [json.loads(x) for x in (DATA / "preference.jsonl").read_text().splitlines() if x.strip()]
    n = batch * steps  # one epoch of `steps` batches: every DPO step meets new pairs
    if kind == "sft":
        train = tuple(CausalExample(prompt=r["prompt"], completion=r["chosen"]) for r in rows[:n])
        task, factory = TaskType.CAUSAL_LM, CausalLMRecipe
    else:
        train = tuple(
            PreferenceExample(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
            for r in rows[:n]
        )
        task, factory = TaskType.PREFERENCE, PreferenceRecipe
    epochs = 2
    hp = Hyperparameters(
        lora=LoraSettings(rank=8, alpha=16.0, dropout=0.0),
        optimizer=OptimizerSettings(
            learning_rate=5e-4,
            batch_size=batch,
            epochs=epochs,
            max_steps=steps * epochs,
            warmup_ratio=0.0,
            max_seq_length=max_len,
        ),
    )
    spec = JobSpec("default", "bench", task, "bench", train, (), hp)
    stamps: list[float] = []
    recipe = factory(
        RecipeContext(
            spec,
            resolve_base_model("smollm2"),
            model_cache_dir=Path(cache_dir),
            on_progress=lambda p: stamps.append(time.perf_counter()),
        )
    )
    recipe.setup()
    after_setup = _rss_mb()
    recipe.train()
    steps_s = [b - a for a, b in itertools.pairwise(stamps)]  # stamps[0]: before step 1
    print(
        json.dumps(
            {
                "kind": kind,
                "epoch1": steps_s[1:steps],  # step 1 left out (warm-up)
                "epoch2": steps_s[steps:],
                "after_setup_mb": after_setup,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                "tokens_max": max(len(r.input_ids) for r in recipe.train_rows)
                if kind == "sft"
                else max(
                    len(r.prompt_ids) + max(len(r.chosen_ids), len(r.rejected_ids)) for r in recipe.train_rows
                ),
            }
        )
    )


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=("sft", "dpo"))
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per epoch (two epochs run)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=160)
    parser.add_argument("--cache-dir", default="/tmp/tuneserve-model-cache")
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.batch, args.max_seq_length, args.cache_dir)
        return
    results = {}
    for kind in ("sft", "dpo"):
        harness.log(f"running {kind}")
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--max-seq-length",
                str(args.max_seq_length),
                "--cache-dir",
                args.cache_dir,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
    sft, dpo = results["sft"], results["dpo"]
    d1, d2 = mean(dpo["epoch1"]), mean(dpo["epoch2"])
    lines = [
        "| job | step time, epoch 1 | step time, epoch 2 (reference cached) | RSS after setup | peak RSS | peak - setup |",
        "|---|---:|---:|---:|---:|---:|",
        f"| SFT (causal_lm), baseline | {mean(sft['epoch1']):.2f} s | {mean(sft['epoch2']):.2f} s | {sft['after_setup_mb']:.0f} MB | {sft['peak_mb']:.0f} MB | {sft['peak_mb'] - sft['after_setup_mb']:.0f} MB |",
        f"| DPO (preference) | {d1:.2f} s | {d2:.2f} s | {dpo['after_setup_mb']:.0f} MB | {dpo['peak_mb']:.0f} MB | {dpo['peak_mb'] - dpo['after_setup_mb']:.0f} MB |",
        f"| DPO / SFT | {d1 / mean(sft['epoch1']):.2f}x | {d2 / mean(sft['epoch2']):.2f}x | {dpo['after_setup_mb'] / sft['after_setup_mb']:.2f}x | {dpo['peak_mb'] / sft['peak_mb']:.2f}x | |",
    ]
    body = "\n".join(lines) + (
        f"\n\n{args.batch} prompts per batch ({args.batch} SFT sequences; {args.batch} pairs = {2 * args.batch} DPO "
        f"sequences), {args.steps} steps per epoch, 2 epochs, LoRA rank 8 on q/k/v/o, max_seq_length "
        f"{args.max_seq_length} (longest row: SFT {sft['tokens_max']}, DPO prompt + longer reply {dpo['tokens_max']} "
        "tokens), SmolLM2-135M-Instruct in float32 on CPU, one process per job. A DPO step runs the policy on "
        "chosen and rejected (twice the sequences of an SFT step) and, in epoch 1, the reference once on each "
        "new pair (no gradient); in epoch 2 the reference log-probs come from the cache. The reference is the "
        "same model with the adapter disabled, so the RSS after setup is the same for both jobs: no second "
        "copy of the weights (SmolLM2-135M in float32 is about half a GB). What DPO adds at the peak is "
        "activations: twice the sequences of an SFT step, and the rejected replies (the base model's "
        "own, up to 64 tokens) are longer than the house-format ones.\n\n"
        f"Measured with `{harness.command_as_run('preference.py', sys.argv[1:])}` on {harness.cpu_model()} "
        f"({os.cpu_count()} cores), {harness.code_version()}."
    )
    print(body)
    if args.docs:
        harness.write_docs(args.docs, SECTION, body)


if __name__ == "__main__":
    main()
