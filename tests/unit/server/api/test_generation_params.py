"""GenerationParams validation (api/convert.py) and the per-row sampling filters
(engine/generation_sampling.py): field paths in errors, defaults, top-k / top-p masks, and
stop-sequence hold-back in streamed text."""

from __future__ import annotations

import pytest
import torch
from generation_fixtures import byte_tokenizer

from tuneserve.v1 import inference_pb2
from tuneserve_server.api.convert import sampling_params
from tuneserve_server.domain.errors import InvalidRequest
from tuneserve_server.engine.generation_sampling import RowText, SamplingParams, filter_logits


def params(**kw):
    return sampling_params(
        inference_pb2.GenerationParams(**kw), default_max_new_tokens=32, max_new_tokens_limit=100
    )


def test_defaults_are_greedy_with_the_server_default_length() -> None:
    p = params()
    assert p == SamplingParams(max_new_tokens=32)
    assert p.greedy and p.seed is None and not p.raw_prompt
    p = params(
        max_new_tokens=100, temperature=0.7, top_p=0.9, top_k=5, stop=["\n\n"], seed=0, raw_prompt=True
    )
    assert (p.max_new_tokens, p.top_k, p.stop, p.seed, p.raw_prompt) == (100, 5, ("\n\n",), 0, True)
    assert p.temperature == pytest.approx(0.7) and p.top_p == pytest.approx(0.9) and not p.greedy


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"temperature": -0.1}, "generation.temperature"),
        ({"temperature": float("nan")}, "generation.temperature"),
        ({"top_p": 0.0}, "generation.top_p"),
        ({"top_p": 1.01}, "generation.top_p"),
        ({"max_new_tokens": 0}, "generation.max_new_tokens"),
        ({"max_new_tokens": 101}, "generation.max_new_tokens"),
        ({"stop": ["ok", ""]}, "generation.stop[1]"),
        ({"stop": ["x" * 300]}, "generation.stop[0]"),
        ({"stop": ["s"] * 17}, "generation.stop"),
        ({"logprobs": True, "top_logprobs": 21}, "generation.top_logprobs"),
        ({"top_logprobs": 2}, "generation.top_logprobs"),  # needs logprobs
    ],
)
def test_each_bad_setting_names_its_field(kw, field) -> None:
    with pytest.raises(InvalidRequest) as err:
        params(**kw)
    assert [v.field for v in err.value.violations] == [field]


def test_all_violations_are_reported_at_once() -> None:
    with pytest.raises(InvalidRequest) as err:
        params(temperature=-1, top_p=2, max_new_tokens=500)
    assert {v.field for v in err.value.violations} == {
        "generation.temperature",
        "generation.top_p",
        "generation.max_new_tokens",
    }


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    kept = lambda s: torch.isfinite(s).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, 1.0, 2, 1.0)) == [0, 1]
    assert kept(filter_logits(logits, 1.0, 0, 0.5)) == [0]  # the top token alone reaches 0.5
    assert kept(filter_logits(logits, 1.0, 0, 0.7)) == [0, 1]
    assert kept(filter_logits(logits, 1.0, 0, 0.76)) == [0, 1, 2]
    assert kept(filter_logits(logits, 1.0, 0, 0.01)) == [0]  # never empty
    assert kept(filter_logits(logits, 1.0, 3, 0.7)) == [0, 1]
    shuffled = logits[[2, 0, 3, 1]]  # order does not matter
    assert kept(filter_logits(shuffled, 1.0, 0, 0.7)) == [1, 3]


def test_streamed_text_holds_back_a_possible_stop_sequence() -> None:
    tok = byte_tokenizer()
    row = RowText(tok, SamplingParams(max_new_tokens=50, stop=("END",)))
    shown = []
    for ch in "abc EN":
        delta, stopped = row.add(tok.convert_tokens_to_ids(tok.tokenize(ch))[0])
        shown.append(delta)
        assert not stopped
    assert "".join(shown) == "abc "  # "EN" could still become "END"
    delta, stopped = row.add(tok.convert_tokens_to_ids(tok.tokenize("D"))[0])
    assert stopped and delta == "" and row.text == "abc "


def test_logprobs_settings_pass_through_and_http_names_its_own_fields() -> None:
    from tuneserve_server.services.sampling import SamplingRequest
    from tuneserve_server.services.sampling import sampling_params as neutral

    p = params(logprobs=True, top_logprobs=20)
    assert (p.logprobs, p.top_logprobs) == (True, 20)
    assert (params().logprobs, params().top_logprobs) == (False, 0)
    with pytest.raises(InvalidRequest) as err:
        neutral(
            SamplingRequest(top_k=-1, top_p=0, max_new_tokens=0),
            default_max_new_tokens=8,
            max_new_tokens_limit=10,
            field=lambda name: {"max_new_tokens": "max_tokens"}.get(name, name),
        )
    assert {v.field for v in err.value.violations} == {"max_tokens", "top_k", "top_p"}
