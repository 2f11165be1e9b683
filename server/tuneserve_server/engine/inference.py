"""The serving engine's front: one base model, the adapter catalog, the batcher and the torch
executor thread. The API layer calls `classify`; nothing here knows about gRPC."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog
import torch

from tuneserve_server.config import Settings
from tuneserve_server.engine.batching import Batcher
from tuneserve_server.engine.catalog import AdapterCatalog
from tuneserve_server.engine.classifier import ClassificationRunner, ClassScores
from tuneserve_server.engine.registry import ANCHOR_SLOT, AdapterKey, AdapterRegistry
from tuneserve_server.errors import FailedPrecondition, NotFound, NotReady
from tuneserve_server.modeling import (
    base_task,
    default_target_modules,
    load_encoder,
    module_names,
    resolve_base_model,
)
from tuneserve_server.naming import AdapterRef
from tuneserve_server.observability.metrics import (
    ADAPTER_LABELS,
    ADAPTER_LATENCY,
    ADAPTER_REQUESTS,
    BASE_ADAPTER_LABEL,
    adapter_label_name,
)
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.storage.records import AdapterVersionRecord
from tuneserve_server.training.jobs import TaskType
from tuneserve_server.training.validation import TrainLimits

log = structlog.get_logger("tuneserve.engine")


@dataclass(frozen=True)
class ClassifyResult:
    adapter: AdapterVersionRecord | None
    scores: list[ClassScores]


class InferenceEngine:
    def __init__(self, settings: Settings, store: JobStore, adapter_store: AdapterStore) -> None:
        self.settings = settings
        self.store = store
        self.adapter_store = adapter_store
        self.catalog = AdapterCatalog()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        self.ready = False
        self._poll_task: asyncio.Task[None] | None = None
        self.batcher: Batcher | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._load)
        await self.refresh()
        self.batcher = Batcher(
            self.runner.run,
            self.executor,
            max_batch_rows=self.settings.max_batch_rows,
            max_wait_ms=self.settings.max_batch_wait_ms,
            max_queue_rows=self.settings.max_queue_rows,
        )
        self.batcher.start()
        self._poll_task = loop.create_task(self._poll(), name="registry-poll")
        self.ready = True
        log.info("engine ready", base_model=self.source.model_id, adapters_known=self.catalog.seq)

    async def stop(self) -> None:
        self.ready = False
        if self._poll_task:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
        if self.batcher:
            await self.batcher.stop()
        await asyncio.to_thread(self.executor.shutdown, True)

    def _load(self) -> None:
        """Runs on the torch thread: base model, peft wrapper with the anchor slot, warm-up."""
        from peft import LoraConfig, get_peft_model

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.source = resolve_base_model(self.settings.base_model)
        self.tokenizer, encoder = load_encoder(self.source, self.settings.device)
        self.task = base_task(encoder)
        self.linear_modules = module_names(encoder)
        self.default_targets = default_target_modules(encoder)
        self.max_positions = int(getattr(encoder.config, "max_position_embeddings", 512))
        anchor = LoraConfig(r=1, target_modules=[self.default_targets[0]], init_lora_weights=True)
        model = get_peft_model(encoder, anchor, adapter_name=ANCHOR_SLOT)
        model.eval()
        self.registry = AdapterRegistry(
            model,
            base_model_id=self.source.model_id,
            linear_modules=self.linear_modules,
            hidden_size=encoder.config.hidden_size,
            max_resident=self.settings.max_resident_adapters,
            max_rank=self.settings.max_lora_rank,
            device=self.settings.device,
        )
        self.runner = ClassificationRunner(
            self.tokenizer, self.registry, self.adapter_store, device=self.settings.device
        )
        with torch.inference_mode():  # warm-up: first-call allocations happen now, not on a user
            enc = self.tokenizer(["warm up"], return_tensors="pt").to(self.settings.device)
            model(**enc, adapter_names=["__base__"])

    def train_limits(self) -> TrainLimits:
        return TrainLimits(
            served_task=self.task,
            base_model=self.source.model_id,
            max_train_examples=self.settings.max_train_examples,
            max_text_chars=self.settings.max_text_chars,
            max_lora_rank=self.settings.max_lora_rank,
            linear_modules=frozenset(self.linear_modules),
            default_targets=self.default_targets,
            max_positions=self.max_positions,
        )

    # ------------------------------------------------------------------ registry sync
    async def refresh(self) -> None:
        """Fold in registry changes; unload deleted and superseded versions between batches."""
        while True:
            records = await asyncio.to_thread(self.store.adapter_changes, self.catalog.seq)
            if not records:
                return
            deleted, superseded = self.catalog.apply(records)
            for rec in records:
                if not rec.deleted:
                    log.info("adapter version available", adapter=f"{rec.namespace}/{rec.name}@{rec.version}")
            gone = set(deleted) | set(superseded)
            if gone and self.ready:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.registry.unload_where, gone.__contains__
                )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await self.refresh()
            except Exception:
                log.warning("registry poll failed", exc_info=True)

    async def resident_keys(self) -> set[AdapterKey]:
        loop = asyncio.get_running_loop()
        return set(await loop.run_in_executor(self.executor, self.registry.resident_keys))

    # ------------------------------------------------------------------ predict
    async def classify(self, ref: AdapterRef | None, texts: list[str]) -> ClassifyResult:
        """Resolve, queue, wait. Per-adapter request count and latency (whole call, any
        outcome) are recorded for requests that resolved to an adapter or the base model;
        unknown names never become labels."""
        start = time.perf_counter()
        record = None
        key = None
        if not self.ready or self.batcher is None:
            raise NotReady("the model is still loading; retry shortly")
        if self.task is not TaskType.CLASSIFICATION:
            raise FailedPrecondition(
                f"this server serves {self.source.model_id}, a {self.task.value} model, not a classifier"
            )
        if ref is not None:
            try:
                record = self.catalog.resolve(ref)
            except NotFound:  # maybe published since the last poll: look once more, now
                await self.refresh()
                record = self.catalog.resolve(ref)
            if record.task is not TaskType.CLASSIFICATION:
                raise FailedPrecondition(f"adapter {ref.name} is a {record.task.value} adapter")
            key = AdapterKey(record.namespace, record.name, record.version)
        try:
            scores = await self.batcher.submit(key, texts)
        finally:
            label = ADAPTER_LABELS.label(
                BASE_ADAPTER_LABEL if record is None else adapter_label_name(record.namespace, record.name)
            )
            ADAPTER_REQUESTS.labels(label).inc()
            ADAPTER_LATENCY.labels(label).observe(time.perf_counter() - start)
        return ClassifyResult(record, scores)
