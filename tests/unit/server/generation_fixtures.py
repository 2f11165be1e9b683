"""A tiny random Llama (float64, so batching never flips a greedy choice through rounding)
with two random peft LoRA adapters in slots s0 / s1 beside the zero anchor, and a byte-level
tokenizer with a chat template: what the generation unit tests decode with. The peft model is
the oracle; the Harness decodes as the server does, through a bare copy of its base with the
gathered LoRA bank holding s0 / s1, read from the files peft saves."""

from __future__ import annotations

import tempfile
import weakref
from collections import deque
from pathlib import Path

import torch

from tuneserve_server.engine.generation import Delta, GenerationResult, GenerationRow
from tuneserve_server.engine.generation_runner import GenerationRunner
from tuneserve_server.engine.generation_sampling import SamplingParams
from tuneserve_server.engine.lora_batched import LoraBank, read_lora
from tuneserve_server.engine.registry import AdapterKey
from tuneserve_server.modeling import module_names

EOS = "<|im_end|>"
PEFT_ANCHOR = "anchor"  # the oracle's zero adapter: peft needs one active for "__base__" rows
SLOTS = ("s0", "s1")


def byte_tokenizer():
    """Every byte is a token (no merges): multi-byte characters span several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|im_start|>": 0, EOS: 1, "<pad>": 2}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", EOS]})
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def tiny_llama_base(vocab_size: int, seed: int = 0):
    """The bare random Llama (float64); the same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    return LlamaForCausalLM(config).to(torch.float64).eval()


def tiny_llama(vocab_size: int, seed: int = 0):
    """tiny_llama_base under peft: a zero anchor adapter and random adapters s0 / s1."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama_base(vocab_size, seed)
    model = get_peft_model(model, LoraConfig(r=1, target_modules=["q_proj"]), adapter_name=PEFT_ANCHOR)
    for i, slot in enumerate(SLOTS):
        torch.manual_seed(100 + i)
        model.add_adapter(
            slot, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        for name, p in model.named_parameters():
            if f".{slot}." in name:
                p.data = (torch.randn_like(p) * 0.5).to(torch.float64)
    model.eval()
    return model


_BANKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def banked(model):
    """(base, bank) for the peft `model`: a bare Llama with exactly its base weights, and the
    LoRA bank holding its adapters s0 / s1 in float64 (built once per model)."""
    if model not in _BANKED:
        from transformers import LlamaForCausalLM

        state = {
            k.replace(".base_layer.", "."): v
            for k, v in model.get_base_model().state_dict().items()
            if ".lora_" not in k
        }
        base = LlamaForCausalLM(model.config).to(torch.float64).eval()
        base.load_state_dict(state, strict=True)
        bank = LoraBank(base, module_names(base) - {"lm_head"}, capacity=4, dtype=torch.float64)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, selected_adapters=list(SLOTS))
            for slot in SLOTS:
                bank.install(
                    slot, read_lora(Path(tmp) / slot, dtype=torch.float64, module_paths=bank.module_paths())
                )
        _BANKED[model] = (base, bank)
    return _BANKED[model]


def key(slot: str | None) -> AdapterKey | None:
    """Rows name their adapter by key; the harness's slot_of maps key.name to the bank slot."""
    return None if slot is None else AdapterKey("default", slot, 1)


class Harness:
    """Drive a GenerationRunner synchronously, one decode step per turn, as the scheduler's
    driver does (with more steps per turn)."""

    def __init__(self, tokenizer, model, max_rows: int = 16, runner: GenerationRunner | None = None) -> None:
        """`model`: the peft oracle from tiny_llama; the runner decodes through `banked(model)`."""
        if runner is None:
            base, bank = banked(model)
            runner = GenerationRunner(
                tokenizer,
                None,
                None,
                model=base,
                bank=bank,
                eos_ids=frozenset({tokenizer.eos_token_id}),
                max_rows=max_rows,
                max_positions=256,
                slot_of=lambda k, keep: "__base__" if k is None else k.name,
            )
        self.runner = runner
        self.inbox: deque[GenerationRow] = deque()

    def add(self, prompt: str, slot: str | None = None, **params) -> tuple[list, GenerationRow]:
        """Queue a row; returns the list its events are appended to, and the row."""
        events: list = []
        params.setdefault("max_new_tokens", 12)
        row = GenerationRow(key(slot), prompt, SamplingParams(**params), events.append)
        self.inbox.append(row)
        return events, row

    def run(self, steps: int | None = None) -> None:
        while self.inbox or self.runner.active_count:
            self.runner.turn(self.inbox, 1)
            if steps is not None:
                steps -= 1
                if steps <= 0:
                    return


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def result_of(events: list) -> GenerationResult:
    results = [e for e in events if isinstance(e, GenerationResult)]
    assert len(results) == 1, events
    return results[0]
