"""The decoding loop (engine/generation_runner.py) on a tiny random Llama with two random LoRA
adapters in the gathered LoRA bank: greedy rows, alone or in a mixed batch, write what peft's
own `generate(adapter_names=...)` writes (the oracle); a row's output does not depend on what
it is batched with (adapters, sampling settings, rows joining and leaving), seeds reproduce,
stop / EOS / length end rows as they should, streamed deltas add up to the final text, and a
cancelled row leaves the batch."""

from __future__ import annotations

import pytest
import torch
from generation_fixtures import (
    Harness,
    banked,
    byte_tokenizer,
    result_of,
    text_of,
    tiny_llama,
    tiny_llama_base,
)

from tuneserve_server.engine.generation_sampling import FinishReason

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

PROMPTS = ["hello there", "what is the weather in Zürich?", "x", "a longer prompt with more words in it"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


def alone(tok, model, prompt, slot=None, **params):
    h = Harness(tok, model)
    events, _ = h.add(prompt, slot, **params)
    h.run()
    return events


def peft_greedy(tok, model, prompt, slot=None, max_new_tokens=10) -> str:
    """The oracle: peft's own generate with the row's adapter (`adapter_names=`), greedy."""
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        adapter_names=["__base__" if slot is None else slot],
        eos_token_id=None,
        pad_token_id=2,
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_greedy_matches_hf_generate_for_base_and_adapters(tok, model) -> None:
    for slot in (None, "s0", "s1"):
        got = result_of(alone(tok, model, PROMPTS[1], slot, max_new_tokens=10))
        assert got.text == peft_greedy(tok, model, PROMPTS[1], slot), slot


def test_the_bank_forward_equals_peft_adapter_names_on_a_mixed_batch(tok, model) -> None:
    """One padded forward over rows of both adapters and the base: the bank the runner decodes
    through gives each row peft's `adapter_names=` logits (float64; the bank holds the factors
    as read through float32, hence not bit-exact)."""
    base, bank = banked(model)
    slots = ["s0", None, "s1", "s0", "s1"]
    enc = tok([*PROMPTS, "y"], return_tensors="pt", padding=True)  # rows of different lengths
    with torch.inference_mode():
        want = model(**enc, adapter_names=["__base__" if s is None else s for s in slots]).logits
        with bank.selecting(slots):
            got = base(**enc).logits
        bare = model(**enc, adapter_names=["__base__"] * len(slots)).logits
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-6, atol=1e-6)
    assert torch.equal(got[1][mask[1]], bare[1][mask[1]])  # the base row is the base, exactly
    assert not torch.allclose(got[0][mask[0]], bare[0][mask[0]], atol=1e-3)  # adapters are applied


def test_a_mixed_greedy_batch_writes_what_peft_writes_for_each_row(tok, model) -> None:
    rows = [
        (PROMPTS[0], "s0"),
        (PROMPTS[1], None),
        (PROMPTS[2], "s1"),
        (PROMPTS[3], "s1"),
        (PROMPTS[1], "s0"),
    ]
    h = Harness(tok, model)
    got = [h.add(p, s, max_new_tokens=10)[0] for p, s in rows]
    h.run()
    assert [result_of(e).text for e in got] == [peft_greedy(tok, model, p, s) for p, s in rows]


def test_adapters_change_the_output(tok, model) -> None:
    texts = {s: result_of(alone(tok, model, PROMPTS[0], s)).text for s in (None, "s0", "s1")}
    assert len(set(texts.values())) == 3, texts


def test_mixed_batch_with_rows_joining_midway_equals_each_row_alone(tok, model) -> None:
    rows = [
        (PROMPTS[0], None, {}),
        (PROMPTS[1], "s0", {}),
        (PROMPTS[2], "s1", {"temperature": 0.9, "top_p": 0.8, "seed": 5}),
        (PROMPTS[3], "s0", {"temperature": 1.3, "top_k": 7, "seed": 11}),
        (PROMPTS[1], None, {"max_new_tokens": 4}),
    ]
    want = [result_of(alone(tok, model, p, s, **kw)) for p, s, kw in rows]
    h = Harness(tok, model)
    got = [h.add(p, s, **kw)[0] for p, s, kw in rows[:2]]
    h.run(steps=3)  # two rows running; three more join between decode steps
    got += [h.add(p, s, **kw)[0] for p, s, kw in rows[2:]]
    h.run()
    assert [result_of(e) for e in got] == want


def test_same_seed_same_output_and_sampling_never_leaks_into_greedy_rows(tok, model) -> None:
    sampled = {"temperature": 1.5, "seed": 1234, "max_new_tokens": 16}
    first = result_of(alone(tok, model, PROMPTS[0], "s1", **sampled)).text
    assert result_of(alone(tok, model, PROMPTS[0], "s1", **sampled)).text == first
    other_seeds = {
        result_of(alone(tok, model, PROMPTS[0], "s1", **{**sampled, "seed": s})).text for s in range(1, 6)
    }
    assert other_seeds - {first}, "different seeds should give some different text"
    greedy = result_of(alone(tok, model, PROMPTS[0], "s1", max_new_tokens=16)).text
    h = Harness(tok, model)
    hot = [h.add(PROMPTS[0], "s1", temperature=2.0, top_k=50, seed=s, max_new_tokens=16)[0] for s in (7, 8)]
    mine = h.add(PROMPTS[0], "s1", max_new_tokens=16)[0]
    seeded = h.add(PROMPTS[0], "s1", **sampled)[0]
    h.run()
    assert result_of(mine).text == greedy
    assert result_of(seeded).text == first
    assert all(result_of(e).text != greedy for e in hot)


def test_length_stop_and_eos(tok, model) -> None:
    full = result_of(alone(tok, model, PROMPTS[3], "s0", max_new_tokens=20))
    assert full.finish_reason is FinishReason.LENGTH and full.completion_tokens == 20
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": PROMPTS[3]}], tokenize=False, add_generation_prompt=True
    )
    assert full.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    stop = full.text[6:8]
    events = alone(tok, model, PROMPTS[3], "s0", max_new_tokens=20, stop=("never-there", stop))
    result = result_of(events)
    assert result.finish_reason is FinishReason.STOP
    assert result.text == full.text[: full.text.index(stop)]
    assert text_of(events) == result.text  # no piece of the stop sequence was ever streamed

    # EOS: make the token the model writes at step 4 the end-of-sequence token.
    ids = tok(full.text, add_special_tokens=False)["input_ids"]
    h = Harness(tok, model)
    h.runner.eos_ids = frozenset({ids[3]})
    events, _ = h.add(PROMPTS[3], "s0", max_new_tokens=20)
    h.run()
    result = result_of(events)
    assert result.finish_reason is FinishReason.EOS
    assert ids[3] not in tok(result.text, add_special_tokens=False)["input_ids"]
    assert full.text.startswith(result.text)


def test_streamed_deltas_add_up_to_the_text_and_never_split_a_character(tok, model) -> None:
    for slot, params in ((None, {}), ("s1", {"temperature": 1.0, "seed": 3}), ("s0", {"stop": ("e",)})):
        events = alone(tok, model, "Grüße 👋 " + PROMPTS[1], slot, max_new_tokens=40, **params)
        assert text_of(events) == result_of(events).text
    # Multi-byte characters: deltas are whole characters even though every byte is a token.
    h = Harness(tok, model)
    events, _ = h.add("é", None, max_new_tokens=3, raw_prompt=True)
    h.run()
    deltas = [e.text for e in events[:-1]]
    assert all(d for d in deltas)


def test_cancelled_row_leaves_the_batch_and_the_others_are_unaffected(tok, model) -> None:
    want = result_of(alone(tok, model, PROMPTS[0], "s0", max_new_tokens=20))
    h = Harness(tok, model)
    keep, _ = h.add(PROMPTS[0], "s0", max_new_tokens=20)
    gone, row = h.add(PROMPTS[1], "s1", max_new_tokens=20)
    h.run(steps=3)
    assert h.runner.active_count == 2
    row.cancelled.set()
    h.run(steps=1)
    assert h.runner.active_count == 1
    seen = len(gone)
    h.run()
    assert len(gone) == seen and not any(hasattr(e, "finish_reason") for e in gone)
    assert result_of(keep) == want


def test_too_long_prompt_fails_only_its_row(tok, model) -> None:
    h = Harness(tok, model)
    ok, _ = h.add(PROMPTS[0], None, max_new_tokens=5)
    bad, _ = h.add("z" * 300, None, max_new_tokens=5)
    h.run()
    assert result_of(ok).completion_tokens == 5
    assert len(bad) == 1 and "context" in str(bad[0])


def test_lora_bank_serving_path_equals_peft_adapter_names(tok, model, tmp_path) -> None:
    """What the server runs: the base model with the gathered LoRA bank, adapters loaded by the
    real registry from the real on-disk format, gives each row what peft gives it (greedy
    rows: peft's generate; every row: the Harness alone)."""
    from tuneserve_server.domain.jobs import TaskType
    from tuneserve_server.engine.generation_runner import GenerationRunner
    from tuneserve_server.engine.lora_batched import LoraBank
    from tuneserve_server.engine.registry import AdapterRegistry
    from tuneserve_server.modeling import ADAPTER_META, AdapterMeta, module_names

    for slot in ("s0", "s1"):
        model.save_pretrained(str(tmp_path), selected_adapters=[slot])
        meta = AdapterMeta(TaskType.CAUSAL_LM, "tiny-llama", (), 4, ("q_proj", "v_proj"), {}, f"job-{slot}")
        (tmp_path / slot / ADAPTER_META).write_text(meta.to_json())
    base = tiny_llama_base(len(tok))
    linear = module_names(base) - {"lm_head"}
    bank = LoraBank(base, linear, capacity=4, dtype=torch.float64)
    registry = AdapterRegistry(
        base,
        bank=bank,
        base_model_id="tiny-llama",
        linear_modules=linear,
        hidden_size=32,
        max_resident=4,
        max_rank=8,
        device="cpu",
        dtype=torch.float64,
    )
    runner = GenerationRunner(
        tok,
        registry,
        None,
        eos_ids=frozenset({tok.eos_token_id}),
        max_positions=256,
        slot_of=lambda k, keep: (
            "__base__" if k is None else registry.ensure(k, tmp_path / k.name, keep=keep).slot
        ),
    )
    rows = [
        (PROMPTS[0], "s0", {}),
        (PROMPTS[1], None, {}),
        (PROMPTS[2], "s1", {"temperature": 0.8, "seed": 2}),
        (PROMPTS[3], "s1", {}),
    ]
    want = [result_of(alone(tok, model, p, s, **kw)) for p, s, kw in rows]
    h = Harness(tok, None, runner=runner)
    got = [h.add(p, s, **kw)[0] for p, s, kw in rows]
    h.run()
    assert [result_of(e) for e in got] == want
    for (prompt, slot, params), result in zip(rows, want, strict=True):
        if not params:
            assert result.text == peft_greedy(tok, model, prompt, slot, max_new_tokens=12)
    assert len(registry) == 2 and len(bank) == 2
