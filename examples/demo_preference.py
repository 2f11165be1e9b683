"""`make demo-preference`: SFT, then DPO from the SFT adapter, on SmolLM2-135M-Instruct, and a
table of base / SFT / SFT+DPO on held-out prompts.

Data: examples/data/support_style/preference.jsonl (chosen = the house-format reply, rejected
= the base model's own greedy reply, see that folder's README). The first 56 pairs train, the
last 14 are held out. SFT = the causal-LM recipe on the training prompts with their chosen
replies; DPO = the preference recipe warm-started from that SFT adapter (policy starts as it,
reference = it, frozen). Both are the recipes the trainer worker runs, driven in this process
(two CPU cores go further without a server in between).

For each model the table gives, on the 14 held-out prompts:
    house format   greedy replies (48 new tokens) that start with "Summary:" and contain
                   "Next step:" (the reply may be cut before the sign-off)
    pref. accuracy pairs where the model gives the chosen reply a higher log-probability
                   (summed over its reply tokens, end-of-turn marker included) than the rejected one
    log p          mean summed log-probability of the chosen / the rejected reply
    worst margin   the smallest log p(chosen) - log p(rejected) over the held-out pairs (how
                   far the least-separated pair is from flipping)

SFT: 28 steps of 8 rows (4 epochs of the 56 rows) at lr 3e-3, enough for 14/14 held-out
replies in the format. DPO: 28 steps of 4 pairs (2 epochs; the reference log-probs are computed
in the first and reused in the second) at lr 2e-4, beta 0.1.

    python examples/demo_preference.py [--sft-steps 28] [--sft-lr 3e-3] [--dpo-steps 28]
                                       [--dpo-lr 2e-4] [--beta 0.1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "support_style" / "preference.jsonl"
N_TRAIN = 56


def is_house_format(text: str) -> bool:
    return text.startswith("Summary:") and "Next step:" in text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=28)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--dpo-steps", type=int, default=28)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-lr", type=float, default=2e-4)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "tuneserve-model-cache"))
    parser.add_argument("--work-dir", default="")
    args = parser.parse_args()

    import torch
    from peft import PeftModel

    from tuneserve_server.domain.jobs import (
        CausalExample,
        Hyperparameters,
        JobSpec,
        LoraSettings,
        OptimizerSettings,
        PreferenceExample,
        PreferenceSettings,
        TaskType,
    )
    from tuneserve_server.modeling import resolve_base_model
    from tuneserve_server.modeling_lm import completion_suffix, load_causal_lm, render_prompt
    from tuneserve_server.training.causal_lm import CausalLMRecipe
    from tuneserve_server.training.preference import (
        PreferenceRecipe,
        collate_pairs,
        encode_pair,
        sequence_logps,
    )
    from tuneserve_server.training.recipe import RecipeContext
    from tuneserve_server.warm_start import read_init

    torch.set_num_threads(2)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="demo-preference-"))
    cache = Path(args.cache_dir)
    source = resolve_base_model("smollm2")
    rows = [json.loads(x) for x in DATA.read_text().splitlines() if x.strip()]
    train, held = rows[:N_TRAIN], rows[N_TRAIN:]
    lora = LoraSettings(rank=8, alpha=16.0, dropout=0.0)

    def progress(name: str):
        def show(p) -> None:
            if p.step:
                print(f"  {name} step {p.step}/{p.total_steps} loss {p.train_loss:.4f}", flush=True)

        return show

    started = time.monotonic()
    print(
        f"SFT: {len(train)} prompts with their house-format replies, {args.sft_steps} steps, lr {args.sft_lr}",
        flush=True,
    )
    sft_spec = JobSpec(
        "default",
        "house",
        TaskType.CAUSAL_LM,
        "demo",
        tuple(CausalExample(prompt=r["prompt"], completion=r["chosen"]) for r in train),
        (),
        Hyperparameters(
            lora=lora,
            optimizer=OptimizerSettings(
                learning_rate=args.sft_lr,
                batch_size=8,
                epochs=10,  # max_steps decides (56 rows are 7 batches an epoch)
                max_steps=args.sft_steps,
                warmup_ratio=0.0,
                max_seq_length=160,
            ),
        ),
    )
    sft = CausalLMRecipe(RecipeContext(sft_spec, source, model_cache_dir=cache, on_progress=progress("sft")))
    sft.setup()
    sft.train()
    sft.save(work / "sft", {})
    del sft

    print(
        f"DPO from the SFT adapter: {len(train)} pairs, {args.dpo_steps} steps, lr {args.dpo_lr}, beta {args.beta}",
        flush=True,
    )
    dpo_spec = JobSpec(
        "default",
        "house",
        TaskType.PREFERENCE,
        "demo",
        tuple(
            PreferenceExample(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in train
        ),
        (),
        Hyperparameters(
            lora=lora,
            optimizer=OptimizerSettings(
                learning_rate=args.dpo_lr,
                batch_size=4,
                epochs=10,  # max_steps decides
                max_steps=args.dpo_steps,
                warmup_ratio=0.0,
                max_seq_length=160,
            ),
            preference=PreferenceSettings(beta=args.beta),
        ),
    )
    # init_from = the SFT adapter, as the worker passes it for Train(init_from="house@1")
    init = read_init(work / "sft")
    dpo = PreferenceRecipe(
        RecipeContext(dpo_spec, source, model_cache_dir=cache, on_progress=progress("dpo"), init=init)
    )
    dpo.setup()
    dpo.train()
    dpo.save(work / "dpo", {})
    del dpo
    train_s = time.monotonic() - started

    print(f"Evaluating base / SFT / SFT+DPO on {len(held)} held-out prompts", flush=True)
    tokenizer, lm = load_causal_lm(source.path, "cpu", cache)
    model = PeftModel.from_pretrained(lm, str(work / "sft"), adapter_name="sft")
    model.load_adapter(str(work / "dpo"), adapter_name="dpo")
    model.eval()
    suffix = completion_suffix(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = [
        encode_pair(
            tokenizer,
            PreferenceExample(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]),
            160,
            suffix=suffix,
        )
        for r in held
    ]
    prompts = [
        tokenizer(render_prompt(tokenizer, [("user", r["prompt"])]), add_special_tokens=False)["input_ids"]
        for r in held
    ]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    results = {}
    samples = {}
    for name in ("base", "sft", "dpo"):
        with torch.no_grad():
            if name == "base":
                with model.disable_adapter():
                    logps, _ = sequence_logps(model, collate_pairs(pairs, pad))
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=48,
                        do_sample=False,
                        pad_token_id=pad,
                    )
            else:
                model.set_adapter(name)
                logps, _ = sequence_logps(model, collate_pairs(pairs, pad))
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=False, pad_token_id=pad
                )
        texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, width:]]
        chosen, rejected = logps.chunk(2)
        results[name] = (
            sum(map(is_house_format, texts)),
            int((chosen > rejected).sum()),
            float(chosen.mean()),
            float(rejected.mean()),
            float((chosen - rejected).min()),
        )
        samples[name] = texts[0]
    n = len(held)
    print()
    print(
        "| model | house format | preference accuracy | mean log p(chosen) | mean log p(rejected) "
        "| worst margin |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in (("base", "base SmolLM2"), ("sft", "SFT"), ("dpo", "SFT + DPO")):
        fmt, acc, c, r, worst = results[name]
        print(f"| {label} | {fmt}/{n} | {acc}/{n} | {c:.1f} | {r:.1f} | {worst:+.1f} |")
    print()
    print(f"held-out prompt: {held[0]['prompt']!r}")
    for name in ("base", "sft", "dpo"):
        print(f"  {name:>4}: {samples[name][:160]!r}")
    total_s = time.monotonic() - started
    print(f"\n(training {train_s:.0f} s, {total_s:.0f} s with the evaluation; adapters in {work})")


if __name__ == "__main__":
    main()
