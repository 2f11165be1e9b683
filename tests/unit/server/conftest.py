"""Shared builders for the server unit tests: job specs, and tiny random BERT models with
adapters written in the real on-disk format (what ClassificationRecipe.save writes)."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tests mirror the package layout (storage/, engine/, training/, ...); the helper
# modules they share (generation_fixtures, worker_fixtures) sit here beside this file.
sys.path.insert(0, str(Path(__file__).parent))

from tuneserve_server.domain.jobs import (
    Hyperparameters,
    JobSpec,
    LabelledText,
    OptimizerSettings,
    TaskType,
)

TINY_BASE_ID = "tiny-bert"
PEFT_ANCHOR = "anchor"  # the peft oracle's zero adapter: peft needs one active for "__base__" rows


# ---------------------------------------------------------------- job specs
def _make_spec(
    namespace: str = "default",
    request_id: str = "req-1",
    adapter_name: str = "intents",
    *,
    n: int = 4,
    seed: int = 42,
) -> JobSpec:
    labels = ("pos", "neg")
    train = tuple(LabelledText(f"text {i}", labels[i % 2]) for i in range(n))
    return JobSpec(
        namespace=namespace,
        adapter_name=adapter_name,
        task=TaskType.CLASSIFICATION,
        request_id=request_id,
        train=train,
        validation=(LabelledText("held out", "pos"),),
        hyperparameters=Hyperparameters(optimizer=OptimizerSettings(seed=seed)),
    )


@pytest.fixture
def make_spec() -> Callable[..., JobSpec]:
    return _make_spec


# ---------------------------------------------------------------- tiny models
def tiny_bert_config(vocab_size: int = 100):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )


class TinyBase:
    """A tiny random BertModel, plus helpers that write adapters for it in the real format."""

    def __init__(self, vocab_size: int = 100, seed: int = 0) -> None:
        import torch
        from transformers import BertModel

        torch.manual_seed(seed)
        self.config = tiny_bert_config(vocab_size)
        self.encoder = BertModel(self.config).eval()
        self.state = copy.deepcopy(self.encoder.state_dict())

    def fresh_encoder(self):
        """A new BertModel with exactly the base weights (for building or checking adapters)."""
        from transformers import BertModel

        model = BertModel(self.config)
        model.load_state_dict(self.state)
        return model.eval()

    def serving_registry(self, *, max_resident: int = 4, max_rank: int = 8, dtype=None, pin_reserve=None):
        """The base served the way InferenceEngine._load serves it: a fresh encoder in the
        serving dtype, its LoRA bank, and the AdapterRegistry over them."""
        import torch

        from tuneserve_server.engine.lora_batched import LoraBank
        from tuneserve_server.engine.registry import AdapterRegistry
        from tuneserve_server.modeling import module_names

        dtype = dtype or torch.float32
        encoder = self.fresh_encoder().to(dtype)
        linear = module_names(encoder)
        return AdapterRegistry(
            encoder,
            bank=LoraBank(encoder, linear, capacity=max_resident, dtype=dtype),
            base_model_id=TINY_BASE_ID,
            linear_modules=linear,
            hidden_size=self.config.hidden_size,
            max_resident=max_resident,
            max_rank=max_rank,
            device="cpu",
            dtype=dtype,
            pin_reserve=pin_reserve,
        )

    def peft_model(self):
        """The oracle serving is checked against: the base under plain peft with a zero anchor
        adapter (so `adapter_names=["__base__", ...]` works); load adapters with `load_adapter`."""
        from peft import LoraConfig, get_peft_model

        encoder = self.fresh_encoder()
        anchor = LoraConfig(r=1, target_modules=["query"], init_lora_weights=True)
        model = get_peft_model(encoder, anchor, adapter_name=PEFT_ANCHOR)
        model.eval()
        return model

    def write_adapter(
        self,
        directory: Path,
        *,
        labels: tuple[str, ...] = ("neg", "pos"),
        rank: int = 4,
        targets: tuple[str, ...] = ("query", "value", "dense"),
        base_model: str = TINY_BASE_ID,
        seed: int = 1,
        meta_rank: int | None = None,
        meta_targets: tuple[str, ...] | None = None,
    ) -> Path:
        """Random non-zero LoRA weights and head, saved as ClassificationRecipe.save does."""
        import torch
        from peft import LoraConfig, get_peft_model

        from tuneserve_server.modeling import ADAPTER_META, AdapterMeta, save_head

        directory.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False
        )
        model = get_peft_model(self.fresh_encoder(), config)
        model.save_pretrained(str(directory))
        head = torch.nn.Linear(self.config.hidden_size, len(labels))
        save_head(directory, head)
        meta = AdapterMeta(
            task=TaskType.CLASSIFICATION,
            base_model=base_model,
            labels=labels,
            lora_rank=rank if meta_rank is None else meta_rank,
            target_modules=targets if meta_targets is None else meta_targets,
            metrics={"accuracy": 0.5},
            job_id="job-test",
        )
        (directory / ADAPTER_META).write_text(meta.to_json())
        return directory


@pytest.fixture(scope="session")
def tiny_base() -> TinyBase:
    return TinyBase()


@pytest.fixture(scope="session")
def make_tiny_base() -> type[TinyBase]:
    return TinyBase


# ---------------------------------------------------------------- job stores
# Every JobStore implementation: SQLite (a file) and PostgreSQL (the real server; a fresh
# schema per test). `open_store(**kwargs)` opens another instance on the same database, as
# another process would; every instance is closed after the test.
@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request, tmp_path):
    from tuneserve_server.storage.job_store import JobStore

    opened: list[JobStore] = []
    if request.param == "sqlite":
        from tuneserve_server.storage.sqlite_store import SqliteStore

        path = tmp_path / "jobs.db"

        def make(**kwargs: object) -> JobStore:
            opened.append(SqliteStore(path, **kwargs))
            return opened[-1]
    else:
        dsn = request.getfixturevalue("postgres_dsn")  # skips (with the reason) or fails
        from tuneserve_server.storage.postgres_store import PostgresStore

        def make(**kwargs: object) -> JobStore:
            opened.append(PostgresStore(dsn, **kwargs))
            return opened[-1]

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store):
    return open_store()
