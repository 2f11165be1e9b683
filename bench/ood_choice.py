"""Which out-of-domain score should uncertainty.py use? Measured on real embeddings.

Pooled (masked-mean) embeddings of the base model (sentence-transformers/all-MiniLM-L6-v2, the
'minilm' package, no adapter) for Banking77 train rows (the fit: class means + covariance), other
train rows (the validation split that sets the 5% false-positive threshold), Banking77 test
(in-domain) and examples/data/ood/general.txt (far out-of-domain). A second table is the harder,
near out-of-domain case: every fourth intent is held out of the fit, and its test rows are the
out-of-domain side (a question the adapter has no label for). Prints AUROC, the false-positive rate
at 95% true-positive rate, and with the threshold uncertainty.py would set (the conformal 95%
quantile of the validation rows' scores) the share of in-domain test rows flagged and of
out-of-domain rows caught. A fine-tuned adapter's embeddings separate better; this only picks the
method.

    python bench/ood_choice.py [--fit-rows 3000] [--val-rows 1000] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import harness
import torch

from tuneserve_server.modeling import load_encoder, mean_pool, resolve_base_model
from tuneserve_server.uncertainty import (
    MahalanobisOOD,
    _squared_mahalanobis,
    auroc,
    conformal_quantile,
    ledoit_wolf,
)

OOD_FILE = harness.ROOT / "examples" / "data" / "ood" / "general.txt"


def embed(texts: list[str], device: str, batch: int = 64, max_length: int = 128) -> torch.Tensor:
    tokenizer, model = load_encoder(resolve_base_model("minilm"), device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(
                texts[i : i + batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            out.append(mean_pool(model(**enc).last_hidden_state, enc["attention_mask"]).double().cpu())
    return torch.cat(out)


def fpr_at_95_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Share of in-domain rows flagged when the threshold catches 95% of the out-of-domain rows."""
    threshold = torch.quantile(out_scores, 0.05)
    return float((in_scores >= threshold).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit-rows", type=int, default=3000)
    parser.add_argument("--val-rows", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    train = harness.read_csv("train")
    test = harness.read_csv("test")
    ood_texts = [line.strip() for line in OOD_FILE.read_text().splitlines() if line.strip()]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    fit_rows = [train[i] for i in order[: args.fit_rows]]
    val_rows = [train[i] for i in order[args.fit_rows : args.fit_rows + args.val_rows]]
    categories = sorted({c for _, c in train})
    index = {c: i for i, c in enumerate(categories)}

    started = time.perf_counter()
    texts = [t for t, _ in fit_rows] + [t for t, _ in val_rows] + [t for t, _ in test] + ood_texts
    emb = embed(texts, args.device)
    a, b, c = len(fit_rows), len(fit_rows) + len(val_rows), len(fit_rows) + len(val_rows) + len(test)
    x_fit, x_val, x_test, x_ood = emb[:a], emb[a:b], emb[b:c], emb[c:]
    y_fit = torch.tensor([index[c] for _, c in fit_rows])
    harness.log(f"embedded {len(texts)} texts in {time.perf_counter() - started:.0f}s")

    y_val = torch.tensor([index[c] for _, c in val_rows])
    y_test = torch.tensor([index[c] for _, c in test])
    print(
        f"\nMiniLM masked-mean embeddings; fit on {len(x_fit)} Banking77 train rows, threshold on "
        f"{len(x_val)} other train rows"
    )
    table(
        f"far: in-domain {len(x_test)} Banking77 test rows, out-of-domain {len(x_ood)} lines of "
        f"{OOD_FILE.relative_to(harness.ROOT)}",
        x_fit, y_fit, x_val, x_test, x_ood,
    )  # fmt: skip
    held_out = torch.arange(len(categories)) % 4 == 3
    keep_fit, keep_val, keep_test = ~held_out[y_fit], ~held_out[y_val], ~held_out[y_test]
    remap = torch.cumsum((~held_out).long(), 0) - 1
    table(
        f"near: {int(held_out.sum())} of {len(categories)} intents held out of the fit; in-domain "
        f"{int(keep_test.sum())} test rows of the others, out-of-domain {int((~keep_test).sum())} test rows "
        "of the held-out intents",
        x_fit[keep_fit], remap[y_fit[keep_fit]], x_val[keep_val], x_test[keep_test], x_test[~keep_test],
    )  # fmt: skip


def table(
    title: str,
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    x_in: torch.Tensor,
    x_out: torch.Tensor,
) -> None:
    classes = int(y_fit.max()) + 1
    means = torch.stack([x_fit[y_fit == k].mean(0) for k in range(classes)])
    unit_fit = torch.nn.functional.normalize(x_fit, dim=1)
    unit_means = torch.nn.functional.normalize(means, dim=1)
    centre = x_fit.mean(0)
    background, _ = ledoit_wolf(x_fit - centre)
    background_precision = torch.linalg.inv(background)

    def global_mahalanobis(x: torch.Tensor) -> torch.Tensor:
        return _squared_mahalanobis(x, centre[None], background_precision)[:, 0]

    def cosine_to_means(x: torch.Tensor) -> torch.Tensor:
        return 1.0 - (torch.nn.functional.normalize(x, dim=1) @ unit_means.T).max(1).values

    def knn_cosine(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def score(x: torch.Tensor) -> torch.Tensor:
            sims = torch.nn.functional.normalize(x, dim=1) @ unit_fit.T
            return 1.0 - sims.topk(k, dim=1).values[:, -1]

        return score

    detectors = {
        method: MahalanobisOOD.fit(x_fit, y_fit, x_val, method=method, fpr=0.05)  # type: ignore[arg-type]
        for method in ("relative", "mahalanobis")
    }
    unit = torch.nn.functional.normalize
    normalised = {
        method: MahalanobisOOD.fit(unit(x_fit, dim=1), y_fit, unit(x_val, dim=1), method=method)  # type: ignore[arg-type]
        for method in ("relative", "mahalanobis")
    }
    scorers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "min class Mahalanobis (shared LW cov)": detectors["mahalanobis"].scores,
        "  same, on L2-normalised embeddings": lambda x: normalised["mahalanobis"].scores(unit(x, dim=1)),
        "relative Mahalanobis (min_c MD_c - MD_0)": detectors["relative"].scores,
        "  same, on L2-normalised embeddings ": lambda x: normalised["relative"].scores(unit(x, dim=1)),
        "global Mahalanobis (one Gaussian)": global_mahalanobis,
        "min cosine distance to class means": cosine_to_means,
        "kNN cosine distance (k=1)": knn_cosine(1),
        "kNN cosine distance (k=10)": knn_cosine(10),
    }
    print(f"\n{title}\n")
    header = f"{'score':44s} {'AUROC':>6s} {'FPR@95TPR':>9s} {'in flagged @5%':>14s} {'ood caught @5%':>14s}"
    print(header)
    print("-" * len(header))
    for name, scorer in scorers.items():
        s_val, s_in, s_out = scorer(x_val), scorer(x_in), scorer(x_out)
        threshold = conformal_quantile(s_val, 0.95)
        flagged = float((s_in > threshold).double().mean())
        caught = float((s_out > threshold).double().mean())
        print(
            f"{name:44s} {auroc(s_in, s_out):6.4f} {fpr_at_95_tpr(s_in, s_out):9.3f} "
            f"{flagged:14.3f} {caught:14.3f}"
        )


if __name__ == "__main__":
    main()
