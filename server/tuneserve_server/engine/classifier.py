"""The torch side of classification serving: one forward pass for a batch of requests that
may each name a different adapter: the registry's LoRA bank picks each row's adapter (one
gathered product per layer)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.uncertainty import ConformalMode, UncertaintyRequest
from tuneserve_server.engine.batching import PendingRequest
from tuneserve_server.engine.packed import packed_forward, packed_mean_pool
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry, ResidentAdapter
from tuneserve_server.modeling import mean_pool
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.uncertainty import text_uniforms


@dataclass(frozen=True)
class ClassScores:
    """One text's result: the adapter's labels and their probabilities, in label order."""

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    # Only when the request asked (UncertaintyRequest): the conformal set (most probable
    # label first) and the calibration used; the abstain decision and out-of-domain score.
    prediction_set: tuple[str, ...] | None = None
    conformal_mode: ConformalMode | None = None
    abstain: bool = False
    abstain_reason: str = ""
    out_of_domain: bool = False
    ood_score: float | None = None

    def top(self) -> tuple[str, float]:
        i = max(range(len(self.probabilities)), key=self.probabilities.__getitem__)
        return self.labels[i], self.probabilities[i]


class ClassificationRunner:
    def __init__(
        self,
        tokenizer: Any,
        registry: AdapterRegistry,
        adapter_store: AdapterStore,
        *,
        device: str,
        max_length: int = 128,
        packed: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.registry = registry
        self.adapter_store = adapter_store
        self.device = device
        self.max_length = max_length
        # True: the forward runs over the batch's real tokens only (engine/packed.py); the
        # engine sets it for BERT-family bases (settings.classify_packed).
        self.packed = packed

    def _resident(self, keys: set[AdapterKey]) -> dict[AdapterKey, ResidentAdapter | Exception]:
        out: dict[AdapterKey, ResidentAdapter | Exception] = {}
        for key in sorted(keys):
            try:
                # Open (download, verify checksums) only to load: a resident version was
                # verified when it loaded, and deletions reach the registry through the catalog.
                # The engine's loader makes a cold adapter resident off this thread before its
                # request is queued; loading here is the fallback for one evicted since then.
                directory = (
                    None
                    if self.registry.get(key) is not None
                    else self.adapter_store.open(key.namespace, key.name, key.version)
                )
                out[key] = self.registry.ensure(key, directory, keep=keys)
            except Exception as exc:  # fails only the requests for this adapter
                out[key] = exc
        return out

    @torch.inference_mode()
    def run(self, batch: list[PendingRequest]) -> list[list[ClassScores] | Exception]:
        keys = {r.key for r in batch if r.key is not None}
        resident = self._resident(keys)
        results: list[list[ClassScores] | Exception | None] = [None] * len(batch)
        texts: list[str] = []
        slots: list[str] = []
        for i, request in enumerate(batch):
            if request.key is None:
                results[i] = FailedPrecondition(
                    "the base model has no classification head; name an adapter trained for this task"
                )
                continue
            entry = resident[request.key]
            if isinstance(entry, Exception):
                results[i] = entry
                continue
            texts += request.texts
            slots += [entry.slot] * request.rows
        if texts:
            self._forward(batch, resident, texts, slots, results)
        return [r if r is not None else [] for r in results]

    def pooled(self, texts: list[str], slots: list[str | None]) -> torch.Tensor:
        """Sentence embeddings (rows, hidden) of `texts`, row i under adapter `slots[i]`."""
        if not self.packed:
            enc = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            with self.registry.bank.selecting(slots, self.device):
                hidden = self.registry.model(**enc).last_hidden_state
            return mean_pool(hidden, enc["attention_mask"])
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        # Rows grouped by adapter: each adapter's tokens are one run for the LoRA bank.
        order = sorted(range(len(texts)), key=lambda i: slots[i] or "")
        ids = [ids[i] for i in order]
        with self.registry.bank.selecting_tokens([slots[i] for i in order], [len(x) for x in ids]):
            hidden, packing = packed_forward(self.registry.model, ids, self.device)
        pooled = packed_mean_pool(hidden, packing)
        inverse = torch.empty(len(order), dtype=torch.long, device=pooled.device)
        inverse[torch.tensor(order, device=pooled.device)] = torch.arange(len(order), device=pooled.device)
        return pooled.index_select(0, inverse)

    def _forward(self, batch, resident, texts, slots, results) -> None:
        pooled = self.pooled(texts, slots)
        by_slot: dict[str, list[int]] = defaultdict(list)
        for row, slot in enumerate(slots):
            by_slot[slot].append(row)
        probs: list[list[float] | None] = [None] * len(texts)
        slot_entry = {e.slot: e for e in resident.values() if not isinstance(e, Exception)}
        for slot, rows in by_slot.items():
            entry = slot_entry[slot]
            picked = pooled[rows[0] : rows[0] + 1] if len(rows) == 1 else pooled[rows]
            logits = entry.head(picked).float() / entry.meta.temperature
            for row, p in zip(rows, torch.softmax(logits, -1).cpu().tolist(), strict=True):
                probs[row] = p
        start = 0  # each request's rows are contiguous, in batch order
        for owner, request in enumerate(batch):
            if results[owner] is not None:  # failed before the forward
                continue
            entry = resident[request.key]
            rows = range(start, start + request.rows)
            start += request.rows
            plain = [ClassScores(entry.meta.labels, tuple(probs[row])) for row in rows]
            if not request.uncertainty.wanted:
                results[owner] = plain
                continue
            try:
                results[owner] = with_uncertainty(
                    entry, plain, pooled[rows.start : rows.stop], request.uncertainty, request.texts
                )
            except Exception as exc:  # a level this version cannot guarantee: this request only
                results[owner] = exc


def with_uncertainty(
    entry: ResidentAdapter,
    plain: list[ClassScores],
    pooled: torch.Tensor,
    options: UncertaintyRequest,
    texts: list[str],
) -> list[ClassScores]:
    """`plain` with the prediction sets / abstention / out-of-domain outputs `options` asks for,
    from the version's fitted UncertaintyModel. `texts` give the randomised APS score its u."""
    model = entry.uncertainty
    if model is None:
        raise FailedPrecondition(
            f"adapter {entry.key} has no uncertainty calibration (trained before it existed, with "
            "evaluation.fit_uncertainty off, or without a validation split); train a new version "
            "to use confidence_level or return_uncertainty"
        )
    probs = torch.tensor([s.probabilities for s in plain], dtype=torch.float64)
    fields: list[dict[str, Any]] = [{} for _ in plain]
    if options.confidence_level is not None:
        u = text_uniforms(texts) if options.score.value == "aps" else None
        sets = model.prediction_sets(
            probs, options.confidence_level, options.score.value, options.mode.value, u
        )
        mode = ConformalMode(sets.mode)
        order = torch.argsort(probs, dim=1, descending=True, stable=True)
        for i, (row_order, members) in enumerate(zip(order.tolist(), sets.members.tolist(), strict=True)):
            chosen = tuple(entry.meta.labels[j] for j in row_order if members[j])
            fields[i].update(prediction_set=chosen, conformal_mode=mode)
    if options.abstention:
        embeddings = pooled.double().cpu()
        detector = model.ood_detector
        if detector is None:
            ood_scores, flags = torch.zeros(len(plain)), torch.zeros(len(plain), dtype=torch.bool)
        else:  # the flags are the scores against the threshold: score once
            ood_scores = detector.scores(embeddings)
            flags = ood_scores > detector.threshold
        decided = model.abstain(probs, flags)
        for i, reason in enumerate(decided.reasons):
            fields[i].update(
                abstain=bool(decided.abstain[i]),
                abstain_reason=reason,
                out_of_domain=bool(flags[i]),
                ood_score=float(ood_scores[i]),
            )
    return [replace(s, **f) for s, f in zip(plain, fields, strict=True)]
