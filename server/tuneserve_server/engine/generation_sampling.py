"""Per-row token choice and text bookkeeping for the decoding loop: each row samples with its
own temperature / top-k / top-p and its own seeded torch.Generator (so one request's settings
and random stream never touch another row), and turns its tokens into text deltas that never
split a multi-byte character and never show a stop sequence, not even a prefix of one."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    EOS = "eos"


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a random seed per row
    raw_prompt: bool = False  # False: the prompt is a user turn in the chat template
    logprobs: bool = False  # also report each generated token's log-probability
    top_logprobs: int = 0  # ... and the k most likely tokens at each step (needs logprobs)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """One row's logits (V,) scaled by temperature with everything outside top-k / the top-p
    nucleus set to -inf. The most likely token always survives."""
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, -1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (cumulative - torch.softmax(sorted_scores, -1)) >= top_p
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """The next token of every row of `logits` (B, V): argmax for greedy rows, a draw from the
    row's own generator otherwise."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy or gen is None:
            out.append(int(greedy[i]))
            continue
        probs = torch.softmax(filter_logits(logits[i], p.temperature, p.top_k, p.top_p), -1)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, text and log-probability under the model (log-softmax of
    the raw logits: before temperature, top-k and top-p), and the `top_logprobs` most likely
    tokens at that step as (id, text, logprob), most likely first."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


def token_logprobs(
    tokenizer, logits: torch.Tensor, tokens: list[int], params: list[SamplingParams]
) -> list[TokenLogprob | None]:
    """For every row of `logits` (B, V) whose params ask for logprobs: the chosen token's
    log-probability and its top-k alternatives; None for the other rows. One log-softmax over
    the rows that asked (in at least float32)."""
    out: list[TokenLogprob | None] = [None] * len(tokens)
    wanted = [i for i, p in enumerate(params) if p.logprobs]
    if not wanted:
        return out
    scores = logits[wanted]
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    logp = torch.log_softmax(scores, -1)
    k = max(params[i].top_logprobs for i in wanted)
    top_v, top_i = torch.topk(logp, k, -1) if k else (None, None)
    chosen = logp.gather(1, torch.tensor([[tokens[i]] for i in wanted], device=logp.device))[:, 0].tolist()

    def text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    for j, i in enumerate(wanted):
        top: tuple[tuple[int, str, float], ...] = ()
        if params[i].top_logprobs and top_v is not None and top_i is not None:
            n = params[i].top_logprobs
            top = tuple(
                (int(t), text(int(t)), float(v))
                for t, v in zip(top_i[j, :n].tolist(), top_v[j, :n].tolist(), strict=True)
            )
        out[i] = TokenLogprob(tokens[i], text(tokens[i]), float(chosen[j]), top)
    return out


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could still become a stop sequence."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


class RowText:
    """The text of one row's completion, decoded from all its tokens each step (byte-level
    BPE and sentencepiece decode prefix-stably except for a trailing partial character)."""

    def __init__(self, tokenizer, params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in params.stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0

    def add(self, token: int) -> tuple[str, bool]:
        """Append a token; returns (delta safe to show now, whether a stop sequence ended it)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(
            self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self.flush(), True
        safe = len(self.text)
        while safe > self.emitted and self.text[safe - 1] == "\ufffd":  # a partial character
            safe -= 1
        safe = max(self.emitted, safe - _held_back(self.text[:safe], self.stops))
        delta = self.text[self.emitted : safe]
        self.emitted = safe
        return delta, False

    def flush(self) -> str:
        """Everything not yet shown (the row is finished)."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta
