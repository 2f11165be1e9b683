"""Build examples/data/support_style/preference.jsonl: one preference pair per support_style
row, chosen = the house-format reply from train.jsonl, rejected = the base model's own greedy
reply to the same prompt (SmolLM2-135M-Instruct, no adapter: what preference tuning has to
move the model away from). Run once; the output is committed with its provenance
(preference.provenance.json: model file and hash, library versions, decoding settings).

    python examples/make_preference_pairs.py [--cache-dir DIR] [--max-new-tokens 64]

Greedy decoding in float32 on CPU, prompts rendered with the model's chat template exactly as
serving renders them, 8 prompts per batch (left-padded)."""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "support_style"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "tuneserve-model-cache"))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import torch
    import transformers

    from tuneserve_server.modeling import resolve_base_model
    from tuneserve_server.modeling_lm import load_causal_lm, render_prompt

    torch.set_num_threads(2)
    source = resolve_base_model("smollm2")
    tokenizer, model = load_causal_lm(source.path, "cpu", Path(args.cache_dir))
    rows = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines() if line.strip()]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    started = time.monotonic()
    replies: list[str] = []
    for start in range(0, len(rows), args.batch):
        part = rows[start : start + args.batch]
        encoded = [
            tokenizer(render_prompt(tokenizer, [("user", r["prompt"])]), add_special_tokens=False)[
                "input_ids"
            ]
            for r in part
        ]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        replies += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, width:]]
        print(f"{len(replies)}/{len(rows)} replies", flush=True)
    with (DATA / "preference.jsonl").open("w") as f:
        for row, reply in zip(rows, replies, strict=True):
            pair = {"prompt": row["prompt"], "chosen": row["completion"], "rejected": reply}
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    digest = hashlib.sha256(Path(source.path).read_bytes()).hexdigest()
    provenance = {
        "made_by": "examples/make_preference_pairs.py",
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "chosen": "the completion of the same row of train.jsonl (house format)",
        "rejected": "the base model's greedy reply to the prompt (no adapter)",
        "model": source.model_id,
        "model_file": Path(source.path).name,
        "model_file_sha256": digest,
        "decoding": {
            "greedy": True,
            "max_new_tokens": args.max_new_tokens,
            "dtype": str(next(model.parameters()).dtype),
            "chat_template": True,
            "batch": args.batch,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "rows": len(rows),
        "seconds": round(time.monotonic() - started, 1),
    }
    (DATA / "preference.provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {len(rows)} pairs to {DATA / 'preference.jsonl'}")


if __name__ == "__main__":
    main()
