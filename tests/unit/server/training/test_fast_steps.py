"""training/fast_steps.py: the frozen base weights cast once give exactly the products that
autocast casting them every step gives (outputs and LoRA gradients); fused AdamW takes plain
AdamW's steps. (The recipe under bfloat16: test_classification_recipe.py.)"""

from __future__ import annotations

import pytest
import torch

from tuneserve_server.training.fast_steps import FrozenWeights, adamw

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
