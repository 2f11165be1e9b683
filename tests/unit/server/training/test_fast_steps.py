"""training/fast_steps.py: the frozen base weights cast once give exactly the products that
autocast casting them every step gives (outputs and LoRA gradients); fused AdamW takes plain
AdamW's steps; FastDropout draws Bernoulli masks of the right rate, independent per element,
scales like nn.Dropout and back-propagates through the mask; inference_weights (LoRA folded
into temporary weights) computes peft's forward, with and without the adapter, and puts every
weight back. (The recipe under bfloat16:
test_classification_recipe.py.)"""

from __future__ import annotations

import pytest
import torch

from tuneserve_server.training.fast_steps import (
    FastDropout,
    FrozenWeights,
    adamw,
    inference_weights,
    use_fast_dropout,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def lora_model(base):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value", "dense"])
    torch.manual_seed(0)
    model = get_peft_model(base.fresh_encoder(), config)
    for name, p in model.named_parameters():  # non-zero B, so the LoRA path matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model.train()


def loss_and_grads(model, ids, mask):
    torch.manual_seed(5)  # the same dropout masks (BERT's own, in train mode) every call
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    loss = hidden.float().pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), hidden.detach(), grads


def test_cast_once_gives_the_products_autocast_gives(tiny_base):
    model = lora_model(tiny_base)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 100, (4, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    want_loss, want_hidden, want_grads = loss_and_grads(model, ids, mask)

    frozen = FrozenWeights(model, torch.bfloat16)
    # Every base Linear of the tiny BERT: q/k/v/attention dense/intermediate/output + pooler.
    assert len(frozen) == 7
    originals = [w.data_ptr() for w in frozen._weights]
    frozen.low()
    assert all(w.dtype == torch.bfloat16 for w in frozen._weights)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    got_loss, got_hidden, got_grads = loss_and_grads(model, ids, mask)
    assert torch.equal(got_loss, want_loss)
    assert torch.equal(got_hidden, want_hidden)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) > 0
    for name in want_grads:
        assert torch.equal(got_grads[name], want_grads[name]), name

    with frozen.in_full():
        assert all(w.dtype == torch.float32 for w in frozen._weights)
    assert all(w.dtype == torch.bfloat16 for w in frozen._weights)
    frozen.release()
    assert [w.data_ptr() for w in frozen._weights] == originals  # the float32 tensors themselves


def test_fused_adamw_takes_the_plain_steps():
    torch.manual_seed(1)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(4)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = (
            adamw(params, lr=0.01, weight_decay=0.01)
            if fused
            else torch.optim.AdamW(params, lr=0.01, weight_decay=0.01)
        )
        assert bool(opt.defaults.get("fused")) == fused
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.05])
def test_fast_dropout_drops_at_the_rate_and_scales_like_nn_dropout(p):
    torch.manual_seed(0)
    drop = FastDropout(p).train()
    assert abs(drop.effective_p - p) <= 2**-17
    x = torch.rand(1000, 1003) + 0.5  # no zeros: a zero output is a dropped element
    y = drop(x)
    kept = y != 0
    n = x.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    torch.testing.assert_close(y[kept], x[kept] / (1 - drop.effective_p), rtol=1e-6, atol=0)
    # Same expectation as the input, as nn.Dropout's: mean of y / x over every element ~ 1.
    assert abs((y / x).mean().item() - 1) < 5 * sigma / (1 - p)
    # Neighbours (the four 16-bit lanes of one 64-bit draw, and the next draw) are independent.
    flat = kept.flatten()
    for shift in (1, 2, 3, 4):
        both = (flat[:-shift] & flat[shift:]).float().mean().item()
        assert abs(both - (1 - p) ** 2) < 6 * sigma
    # Every column (position within a row) drops at the same rate: no lane is biased.
    lanes = kept.flatten()[: n // 4 * 4].view(-1, 4).float().mean(0)
    assert torch.all((lanes - (1 - p)).abs() < 5 * sigma * 2)


def test_fast_dropout_seeded_eval_identity_and_gradient():
    drop = FastDropout(0.3)
    x = torch.randn(7, 33, requires_grad=True)
    torch.manual_seed(4)
    a = drop.train()(x)
    torch.manual_seed(4)
    b = drop(x)
    assert torch.equal(a, b)  # the default generator decides the mask: seeds reproduce it
    assert not torch.equal(drop(x), a)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(9)
    y = drop(x)
    y.sum().backward()
    torch.manual_seed(9)
    mask = drop.mask(x.detach())
    assert torch.equal(x.grad, mask)
    scale = torch.tensor(1 / (1 - drop.effective_p), dtype=torch.float32).item()
    assert set(mask.unique().tolist()) == {0.0, scale}
    assert torch.equal(FastDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_use_fast_dropout_swaps_every_dropout_and_keeps_the_model(tiny_base):
    model = lora_model(tiny_base).eval()
    before = sum(1 for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0)
    probs = sorted(m.p for m in model.modules() if type(m) is torch.nn.Dropout)
    keys = set(model.state_dict())
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    assert use_fast_dropout(model) == before > 0
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
    assert sorted(m.p for m in model.modules() if isinstance(m, FastDropout)) == probs
    assert set(model.state_dict()) == keys  # what is saved is unchanged
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, want)  # eval: no dropout at all
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, FastDropout))


def test_inference_weights_fold_the_lora_products_and_put_every_weight_back(tiny_base):
    model = lora_model(tiny_base).eval()
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 100, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}

    def hidden() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    want_adapted = hidden()
    with model.disable_adapter():
        want_base = hidden()
    assert (want_adapted - want_base).abs().max() > 1e-3  # the adapter changes the output

    with inference_weights(model, None, adapter=True):
        got_adapted = hidden()
    with inference_weights(model, None, adapter=False):
        got_base = hidden()
    torch.testing.assert_close(got_adapted, want_adapted, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_base, want_base)  # no product folded: the very same weights

    with inference_weights(model, torch.bfloat16, adapter=True), torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(
            m.weight.dtype == torch.bfloat16
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in name
        )
        low = hidden().float()
    assert ((low - want_adapted).norm(dim=-1) / want_adapted.norm(dim=-1)).max() < 0.05

    with pytest.raises(RuntimeError), inference_weights(model, torch.bfloat16):
        raise RuntimeError("a pass that fails")
    for name, p in model.named_parameters():  # the same tensors, the same values, float32
        ptr, value = before[name]
        assert p.data_ptr() == ptr and torch.equal(p.detach(), value), name
    assert torch.equal(hidden(), want_adapted)  # the adapter is on again
