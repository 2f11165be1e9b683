"""The torch side of classification serving: one forward pass for a batch of requests that
may each name a different adapter: the registry's LoRA bank picks each row's adapter (one
gathered product per layer)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.uncertainty import ConformalMode
from tuneserve_server.engine.batching import PendingRequest
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry, ResidentAdapter
from tuneserve_server.modeling import mean_pool
from tuneserve_server.storage.adapter_store import AdapterStore


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
    ) -> None:
        self.tokenizer = tokenizer
        self.registry = registry
        self.adapter_store = adapter_store
        self.device = device
        self.max_length = max_length

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
        owners: list[int] = []  # batch index of each row
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
            owners += [i] * request.rows
        if texts:
            self._forward(batch, resident, texts, slots, owners, results)
        return [r if r is not None else [] for r in results]

    def _forward(self, batch, resident, texts, slots, owners, results) -> None:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with self.registry.bank.selecting(slots, self.device):
            hidden = self.registry.model(**enc).last_hidden_state
        pooled = mean_pool(hidden, enc["attention_mask"])
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
        for row, owner in enumerate(owners):
            entry = resident[batch[owner].key]
            if results[owner] is None:
                results[owner] = []
            results[owner].append(ClassScores(entry.meta.labels, tuple(probs[row])))
