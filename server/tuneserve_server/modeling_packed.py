"""The padding-free forward pass of BERT-family encoders: classification serving
(engine/classifier.py, through engine/packed.py) and the training recipe's evaluation passes
(training/classification.py) both run it, so evaluation computes what serving computes.

A padded batch of 16 Banking77 queries is about half padding, and every Linear and every
LoRA product computes it. Here the batch's real tokens are packed into one (tokens, hidden)
matrix instead: every Linear (and the LoRA bank, one contiguous segment of tokens per
adapter) runs once over the real tokens only. Attention is the one step that needs each
sequence on its own: the packed queries/keys/values are gathered into a padded
(rows, heads, longest, head_dim) layout for one masked `scaled_dot_product_attention` call and
gathered back (its FLOPs are a few percent of the Linears' at these lengths). The sentence
embedding is the per-sequence mean of the packed hidden states.

Only the base model's own modules are called (embeddings, LayerNorms, the activation, the
bank's Linear wrappers); the layer wiring is BERT's (post-LayerNorm, absolute positions),
which `supports_packed` checks. Anything else serves through the padded path. Equal to the
padded forward within float rounding (tests/unit/server/engine/test_packed_forward.py).
Under peft, pass the model's base (`get_base_model()`): its LoRA Linear wrappers run on the
packed tokens as they do on padded ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def supports_packed(model: torch.nn.Module) -> bool:
    """True for an encoder whose forward this module reproduces: transformers' BertModel
    with absolute position embeddings, not a decoder."""
    config = getattr(model, "config", None)
    return (
        type(model).__name__ == "BertModel"
        and getattr(config, "model_type", "") == "bert"
        and not getattr(config, "is_decoder", False)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and hasattr(model, "embeddings")
        and hasattr(model, "encoder")
    )


@dataclass(frozen=True)
class Packing:
    """Where each sequence's tokens lie in the packed matrix (sequences back to back)."""

    lengths: torch.Tensor  # (rows,) tokens per sequence
    seq_of_token: torch.Tensor  # (tokens,) the sequence each packed token belongs to
    pad_index: torch.Tensor  # (rows * longest,) packed token at each padded position (0 if padding)
    real_index: torch.Tensor  # (tokens,) padded position of each packed token
    key_mask: torch.Tensor  # (rows, 1, 1, longest) True where a key is a real token
    longest: int

    @classmethod
    def of(cls, lengths: list[int], device: str | torch.device) -> Packing:
        rows, longest = len(lengths), max(lengths)
        length_t = torch.tensor(lengths, dtype=torch.long)
        starts = torch.cumsum(length_t, 0) - length_t
        positions = torch.arange(longest)
        real = positions.unsqueeze(0) < length_t.unsqueeze(1)  # (rows, longest)
        pad_index = torch.where(real, starts.unsqueeze(1) + positions.unsqueeze(0), 0).reshape(-1)
        real_index = real.reshape(-1).nonzero().squeeze(1)
        seq_of_token = torch.repeat_interleave(torch.arange(rows), length_t)
        return cls(
            lengths=length_t.to(device),
            seq_of_token=seq_of_token.to(device),
            pad_index=pad_index.to(device),
            real_index=real_index.to(device),
            key_mask=real.view(rows, 1, 1, longest).to(device),
            longest=longest,
        )


def packed_inputs(
    input_ids: list[list[int]], device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, tokens) packed token ids and their per-sequence positions."""
    flat = [t for ids in input_ids for t in ids]
    positions = [p for ids in input_ids for p in range(len(ids))]
    return (
        torch.tensor([flat], dtype=torch.long, device=device),
        torch.tensor([positions], dtype=torch.long, device=device),
    )


def _attention(self_attn: torch.nn.Module, hidden: torch.Tensor, pack: Packing) -> torch.Tensor:
    """BertSelfAttention over packed tokens: (tokens, hidden) -> (tokens, all_head_size)."""
    heads, head_dim = self_attn.num_attention_heads, self_attn.attention_head_size
    rows = pack.lengths.shape[0]

    def padded(x: torch.Tensor) -> torch.Tensor:  # (tokens, H*D) -> (rows, H, longest, D)
        x = x.index_select(0, pack.pad_index).view(rows, pack.longest, heads, head_dim)
        return x.transpose(1, 2)

    q = padded(self_attn.query(hidden))
    k = padded(self_attn.key(hidden))
    v = padded(self_attn.value(hidden))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=pack.key_mask, scale=self_attn.scaling)
    out = out.transpose(1, 2).reshape(rows * pack.longest, heads * head_dim)
    return out.index_select(0, pack.real_index)


def packed_forward(
    model: torch.nn.Module, input_ids: list[list[int]], device: str | torch.device
) -> tuple[torch.Tensor, Packing]:
    """Last hidden states of every real token, packed: (tokens, hidden), in input order.
    The LoRA bank (if any) must have been given the matching token segments
    (`LoraBank.selecting_tokens`)."""
    ids, positions = packed_inputs(input_ids, device)
    pack = Packing.of([len(x) for x in input_ids], device)
    hidden = model.embeddings(
        input_ids=ids, token_type_ids=torch.zeros_like(ids), position_ids=positions
    ).squeeze(0)
    for layer in model.encoder.layer:
        attn = layer.attention
        attended = attn.output(_attention(attn.self, hidden, pack), hidden)
        hidden = layer.output(layer.intermediate(attended), attended)
    return hidden, pack


def packed_mean_pool(hidden: torch.Tensor, pack: Packing) -> torch.Tensor:
    """The per-sequence mean of packed hidden states: (rows, hidden)."""
    rows = pack.lengths.shape[0]
    sums = torch.zeros(rows, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    sums.index_add_(0, pack.seq_of_token, hidden)
    return sums / pack.lengths.unsqueeze(1).to(hidden.dtype)
