"""The torch side of generation: one decoding loop with a KV cache over every active row,
each row with its own adapter (the registry's gathered LoRA bank), sampling settings and seed.

Rows join between decode steps: new prompts are prefilled together (left-padded), and their
cache is left-padded to the running batch's length and concatenated to it. Positions are
given explicitly per row, so padding never shifts a row's positions and a row's output does
not depend on what it is batched with. Finished and cancelled rows leave the batch at once
(their cache rows are dropped and all-padding columns trimmed). Everything here runs on the
engine's single torch thread; the asyncio side only reads `active_count`."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.engine.generation import Delta, GenerationResult, GenerationRow
from tuneserve_server.engine.generation_sampling import (
    FinishReason,
    RowText,
    TokenLogprob,
    choose_tokens,
    token_logprobs,
)
from tuneserve_server.engine.lora_batched import LoraBank
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry
from tuneserve_server.modeling_lm import render_chat, render_prompt
from tuneserve_server.observability.metrics import (
    GENERATION_ACTIVE_ROWS,
    GENERATION_CANCELLED,
    GENERATION_FINISHED,
    GENERATION_TOKENS,
)
from tuneserve_server.storage.adapter_store import AdapterStore

BASE_SLOT = "__base__"


@dataclass(eq=False)
class _Active:
    row: GenerationRow
    slot: str
    prompt_tokens: int
    text: RowText
    generator: torch.Generator | None
    last_token: int = 0
    generated: int = 0
    started: float = field(default_factory=time.perf_counter)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with params.logprobs
    unsent: int = 0  # how many of `logprobs` (the last ones) no delta has carried yet


class GenerationRunner:
    def __init__(
        self,
        tokenizer: Any,
        registry: AdapterRegistry | None,
        adapter_store: AdapterStore | None,
        *,
        model: torch.nn.Module | None = None,
        bank: LoraBank | None = None,
        device: str = "cpu",
        eos_ids: frozenset[int] = frozenset(),
        max_rows: int = 16,
        max_positions: int = 2048,
        slot_of: Callable[[AdapterKey | None, set[AdapterKey]], str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.registry = registry
        self.adapter_store = adapter_store
        # Without a registry (tests): a base model, its bank and `slot_of` come in directly.
        self.model = model if model is not None else registry.model  # type: ignore[union-attr]
        self.bank = bank if bank is not None else registry.bank  # type: ignore[union-attr]
        self.device = device
        self.eos_ids = eos_ids
        self.max_rows = max_rows
        self.max_positions = max_positions
        # How a row's adapter becomes a slot id: the registry (loading on demand) by default.
        self.slot_of = slot_of or self._registry_slot
        self._rows: list[_Active] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, cached positions): 1 real, 0 padding
        self.steps = 0

    # ------------------------------------------------------------------ state
    @property
    def active_count(self) -> int:
        return len(self._rows)

    def active_rows(self) -> list[GenerationRow]:
        return [a.row for a in self._rows]

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def turn(self, inbox: deque[GenerationRow], max_steps: int) -> None:
        """Admit waiting rows and run up to `max_steps` decode steps."""
        try:
            for _ in range(max_steps):
                self._revalidate()
                self._admit(inbox)
                if not self._rows:
                    return
                self._step()
        except Exception as exc:  # a failed forward fails every row in it
            for a in self._rows:
                a.row.sink(exc)
            self._reset()
            raise

    def _reset(self) -> None:
        self._rows, self._cache, self._mask = [], None, None
        GENERATION_ACTIVE_ROWS.set(0)

    def _registry_slot(self, key: AdapterKey | None, keep: set[AdapterKey]) -> str:
        if key is None:
            return BASE_SLOT
        assert self.registry is not None and self.adapter_store is not None
        directory = (
            None
            if self.registry.get(key) is not None
            else self.adapter_store.open(key.namespace, key.name, key.version)
        )
        return self.registry.ensure(key, directory, keep=keep).slot

    def _revalidate(self) -> None:
        """A version unloaded between turns (deleted, superseded) while rows still use it is
        loaded again, so running rows finish on the version they started with."""
        if self.registry is None:
            return
        keep = {a.row.key for a in self._rows if a.row.key is not None}
        for a in self._rows:
            if a.row.key is None:
                continue
            entry = self.registry.get(a.row.key)
            if entry is None or entry.slot != a.slot:  # unloaded under the row: load it again
                try:
                    a.slot = self.slot_of(a.row.key, keep)
                except Exception as exc:
                    a.row.sink(exc)
                    a.row.cancelled.set()

    def _forward(self, slots: list[str], **inputs: Any) -> torch.Tensor:
        """Last-position logits of one forward pass, row i through adapter slots[i]: the LoRA
        bank applies each row's adapter (one gathered product per layer)."""
        with self.bank.selecting([None if s == BASE_SLOT else s for s in slots], self.device):
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def _tokens(self, row: GenerationRow) -> list[int]:
        if isinstance(row.prompt, tuple):  # chat messages: the model's template, always
            prompt = render_chat(self.tokenizer, [(t.role, t.content) for t in row.prompt])
        elif row.params.raw_prompt:
            prompt = row.prompt
        else:
            prompt = render_prompt(self.tokenizer, [("user", row.prompt)])
        raw = row.params.raw_prompt and isinstance(row.prompt, str)
        ids = self.tokenizer(prompt, add_special_tokens=raw)["input_ids"]
        if not ids:
            raise InvalidRequest.field("inputs", "the prompt has no tokens")
        if len(ids) + row.params.max_new_tokens > self.max_positions:
            raise InvalidRequest.field(
                "generation.max_new_tokens",
                f"the prompt is {len(ids)} tokens; with {row.params.max_new_tokens} new tokens it "
                f"exceeds the model's {self.max_positions}-token context",
            )
        return ids

    def _admit(self, inbox: deque[GenerationRow]) -> None:
        new: list[tuple[GenerationRow, str, list[int]]] = []
        keep = {a.row.key for a in self._rows if a.row.key is not None}
        keep |= {r.key for r in list(inbox)[: self.max_rows] if r.key is not None}
        while inbox and len(self._rows) + len(new) < self.max_rows:
            row = inbox.popleft()
            if row.cancelled.is_set():
                continue
            try:
                new.append((row, self.slot_of(row.key, keep), self._tokens(row)))
            except Exception as exc:  # fails only this row
                row.sink(exc)
        if new:
            self._prefill(new)

    def _prefill(self, new: list[tuple[GenerationRow, str, list[int]]]) -> None:
        from transformers import DynamicCache

        width = max(len(ids) for _, _, ids in new)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, _, ids in new], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for _, _, ids in new], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(
            [slot for _, slot, _ in new],
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
        )
        rows = []
        for row, slot, ids in new:
            seed = row.params.seed if row.params.seed is not None else random.getrandbits(63)
            gen = None
            if not row.params.greedy:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(seed)
            rows.append(_Active(row, slot, len(ids), RowText(self.tokenizer, row.params), gen))
        self._merge(rows, cache, mask)
        self._advance(rows, logits)

    def _merge(self, rows: list[_Active], cache: Any, mask: torch.Tensor) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        assert self._mask is not None
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                a, b = getattr(old_layer, name), getattr(new_layer, name)
                a = torch.nn.functional.pad(a, (0, 0, width - old_len, 0))
                b = torch.nn.functional.pad(b, (0, 0, width - new_len, 0))
                setattr(old_layer, name, torch.cat([a, b], 0))
        self._mask = torch.cat(
            [
                torch.nn.functional.pad(self._mask, (width - old_len, 0)),
                torch.nn.functional.pad(mask, (width - new_len, 0)),
            ],
            0,
        )
        self._rows = self._rows + rows

    def _step(self) -> None:
        assert self._mask is not None
        positions = self._mask.sum(-1, keepdim=True)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], -1)
        input_ids = torch.tensor([[a.last_token] for a in self._rows], device=self.device)
        logits = self._forward(
            [a.slot for a in self._rows],
            input_ids=input_ids,
            attention_mask=self._mask,
            position_ids=positions,
            past_key_values=self._cache,
        )
        self.steps += 1
        self._advance(list(self._rows), logits)

    def _advance(self, rows: list[_Active], logits: torch.Tensor) -> None:
        """Choose each row's next token (logits[i] is rows[i]'s), send its delta, and drop
        finished or cancelled rows."""
        params = [a.row.params for a in rows]
        tokens = choose_tokens(logits, params, [a.generator for a in rows])
        logprobs = token_logprobs(self.tokenizer, logits, tokens, params)
        done: set[int] = set()
        for a, token, lp in zip(rows, tokens, logprobs, strict=True):
            if a.row.cancelled.is_set():
                GENERATION_CANCELLED.inc()
                done.add(id(a))
                continue
            GENERATION_TOKENS.inc()
            finish = None
            if token in self.eos_ids:
                delta, finish = a.text.flush(), FinishReason.EOS
            else:
                a.generated += 1
                a.last_token = token
                if lp is not None:
                    a.logprobs.append(lp)
                    a.unsent += 1
                delta, stopped = a.text.add(token)
                if stopped:
                    finish = FinishReason.STOP
                elif a.generated >= a.row.params.max_new_tokens:
                    delta, finish = delta + a.text.flush(), FinishReason.LENGTH
            if delta or (finish is not None and a.unsent):
                sent = tuple(a.logprobs[len(a.logprobs) - a.unsent :]) if a.unsent else ()
                a.unsent = 0
                a.row.sink(Delta(delta, sent))
            if finish is not None:
                a.row.sink(
                    GenerationResult(a.text.text, finish, a.prompt_tokens, a.generated, tuple(a.logprobs))
                )
                GENERATION_FINISHED.labels(finish.value).inc()
                done.add(id(a))
        if done:
            self._drop(done)
        GENERATION_ACTIVE_ROWS.set(len(self._rows))

    def _drop(self, done: set[int]) -> None:
        keep = [i for i, a in enumerate(self._rows) if id(a) not in done]
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        assert self._mask is not None
        self._mask = self._mask[index]
        self._rows = [self._rows[i] for i in keep]
        # Columns that are padding in every remaining row carry nothing: trim them.
        first = int(self._mask.any(0).int().argmax())
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
