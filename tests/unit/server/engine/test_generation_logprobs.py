"""Per-token log-probabilities and chat-message prompts in the decoding loop, on the tiny
random Llama with two random LoRA adapters: every row's logprobs (chosen token and top-k)
equal a direct peft forward of prompt + completion through that row's adapter, in a mixed
batch of adapters, greedy and sampled rows; streamed deltas carry them exactly once; a
conversation is rendered by the tokenizer's own apply_chat_template."""

from __future__ import annotations

import copy

import pytest
import torch
from generation_fixtures import Harness, byte_tokenizer, result_of, text_of, tiny_llama

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest
from tuneserve_server.domain.jobs import ChatTurn
from tuneserve_server.engine.generation import Delta

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok))


def rendered_ids(tok, messages: list[dict[str, str]]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def oracle_logprobs(
    model, prompt_ids: list[int], completion_ids: list[int], slot: str | None
) -> torch.Tensor:
    """log-softmax over the vocabulary at each completion position: (len(completion), V)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids, adapter_names=["__base__" if slot is None else slot]).logits[0]
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(completion_ids) - 1)
    return torch.log_softmax(logits[list(positions)], -1)


def check_against_oracle(tok, model, prompt: str, slot: str | None, result, k: int) -> None:
    prompt_ids = rendered_ids(tok, [{"role": "user", "content": prompt}])
    completion = [lp.token_id for lp in result.logprobs]
    assert len(completion) == result.completion_tokens > 0
    want = oracle_logprobs(model, prompt_ids, completion, slot)
    for step, lp in enumerate(result.logprobs):
        assert lp.logprob == pytest.approx(float(want[step, lp.token_id]), abs=1e-6)
        assert lp.token == tok.decode([lp.token_id], skip_special_tokens=False)
        top_v, top_i = torch.topk(want[step], k)
        assert [t for t, _, _ in lp.top] == top_i.tolist()
        assert [v for _, _, v in lp.top] == pytest.approx(top_v.tolist(), abs=1e-6)
        assert [s for _, s, _ in lp.top] == [
            tok.decode([t], skip_special_tokens=False) for t in top_i.tolist()
        ]


def test_logprobs_in_a_mixed_adapter_batch_equal_a_direct_peft_forward(tok, model) -> None:
    rows = [
        ("hello there", "s0", {}),
        ("what is the weather in Zürich?", None, {}),
        ("x", "s1", {"temperature": 1.3, "top_p": 0.9, "seed": 5}),  # sampled: raw model logprobs
        ("a longer prompt with more words", "s1", {}),
    ]
    h = Harness(tok, model)
    events = [
        h.add(p, s, max_new_tokens=8, logprobs=True, top_logprobs=3, **extra)[0] for p, s, extra in rows
    ]
    plain, _ = h.add("hello there", "s0", max_new_tokens=8)  # no logprobs asked: none sent
    h.run()
    for (prompt, slot, extra), ev in zip(rows, events, strict=True):
        result = result_of(ev)
        check_against_oracle(tok, model, prompt, slot, result, 3)
        if not extra:  # greedy: the chosen token is the most likely one
            assert all(lp.token_id == lp.top[0][0] for lp in result.logprobs)
        # Streamed deltas carry every token's logprob exactly once, in order.
        streamed = [lp for e in ev if isinstance(e, Delta) for lp in e.logprobs]
        assert streamed == list(result.logprobs)
    assert result_of(plain).logprobs == () and all(not e.logprobs for e in plain if isinstance(e, Delta))
    assert result_of(plain).text == result_of(events[0]).text  # asking for logprobs changes nothing


def test_logprobs_without_top_k_and_with_a_stop_sequence(tok, model) -> None:
    h = Harness(tok, model)
    free, _ = h.add("hello there", "s0", max_new_tokens=10, logprobs=True)
    h.run()
    text = result_of(free).text
    assert len(text) > 3
    stop = text[2:4]
    h = Harness(tok, model)
    stopped, _ = h.add("hello there", "s0", max_new_tokens=10, logprobs=True, stop=(stop,))
    h.run()
    result = result_of(stopped)
    assert result.finish_reason.value == "stop" and result.text == text[: text.find(stop)]
    assert all(lp.top == () for lp in result.logprobs)
    # every counted token has its logprob, also those that spelt the stop sequence
    assert len(result.logprobs) == result.completion_tokens
    assert result.logprobs == result_of(free).logprobs[: result.completion_tokens]


def test_chat_messages_are_rendered_by_apply_chat_template(tok, model) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "what is 2+2?"},
    ]
    turns = tuple(ChatTurn(m["role"], m["content"]) for m in messages)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    h = Harness(tok, model)
    chat, _ = h.add(turns, "s1", max_new_tokens=10)
    raw, _ = h.add(text, "s1", max_new_tokens=10, raw_prompt=True)
    h.run()
    assert result_of(chat).prompt_tokens == len(rendered_ids(tok, messages))
    assert result_of(chat).text == result_of(raw).text == text_of(chat)
    assert result_of(chat).prompt_tokens == result_of(raw).prompt_tokens
    # raw_prompt does not apply to messages: they always go through the template
    h = Harness(tok, model)
    chat_raw, _ = h.add(turns, "s1", max_new_tokens=10, raw_prompt=True)
    h.run()
    assert result_of(chat_raw).text == result_of(chat).text


def test_no_template_or_a_refusing_template_fails_only_that_row(tok, model) -> None:
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    h = Harness(bare, model)
    events, _ = h.add((ChatTurn("user", "hello"),), None, max_new_tokens=4)
    h.run()
    assert isinstance(events[-1], FailedPrecondition) and "chat template" in events[-1].message

    strict = copy.deepcopy(tok)
    strict.chat_template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be the user') }}"
        "{% endif %}" + tok.chat_template
    )
    h = Harness(strict, model)
    bad, _ = h.add((ChatTurn("assistant", "hello"),), None, max_new_tokens=4)
    good, _ = h.add((ChatTurn("user", "hello"),), None, max_new_tokens=4)
    h.run()
    assert isinstance(bad[-1], InvalidRequest) and bad[-1].violations[0].field == "messages"
    assert "the first message must be the user" in bad[-1].message
    assert result_of(good).completion_tokens == 4
