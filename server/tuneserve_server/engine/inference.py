"""The serving engine's front: one base model, the adapter catalog, the batcher and the torch
executor thread. The API layer calls `classify`; nothing here knows about gRPC."""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from tuneserve_server.config import Settings
from tuneserve_server.domain.errors import FailedPrecondition, NotFound, NotReady
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.limits import TrainLimits
from tuneserve_server.domain.naming import AdapterRef
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.domain.server_info import ServedModel
from tuneserve_server.domain.uncertainty import NONE as NO_UNCERTAINTY
from tuneserve_server.domain.uncertainty import UncertaintyRequest
from tuneserve_server.engine.batching import Batcher
from tuneserve_server.engine.catalog import AdapterCatalog
from tuneserve_server.engine.classifier import ClassificationRunner, ClassScores
from tuneserve_server.engine.generation import (
    GenerationResult,
    GenerationScheduler,
    Prompt,
    RowStream,
    SamplingParams,
)
from tuneserve_server.engine.loading import AdapterLoader
from tuneserve_server.engine.lora_batched import LoraBank
from tuneserve_server.engine.packed import supports_packed
from tuneserve_server.engine.registry import AdapterKey, AdapterRegistry
from tuneserve_server.modeling import (
    base_task,
    default_target_modules,
    load_encoder,
    module_names,
    resolve_base_model,
)
from tuneserve_server.modeling_lm import has_chat_template, is_causal_lm_path
from tuneserve_server.observability.metrics import (
    ABSTAINED_ROWS,
    ADAPTER_LABELS,
    ADAPTER_LATENCY,
    ADAPTER_REQUESTS,
    BASE_ADAPTER_LABEL,
    UNCERTAINTY_ROWS,
    adapter_label_name,
)
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore

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
        self._pinned_names: set[tuple[str, str]] = set()
        self._poll_task: asyncio.Task[None] | None = None
        self.batcher: Batcher | None = None
        self.loader: AdapterLoader | None = None  # cold loads off the torch thread
        self.generation: GenerationScheduler | None = None  # causal LM: the decoding loop's driver
        self._counting_lock = threading.Lock()
        self._counting_tokenizer: Any = None  # a copy of the tokenizer for the data report

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._load)
        self.loader = AdapterLoader(
            self.registry,
            self.adapter_store,
            self.executor,
            max_concurrent=self.settings.max_concurrent_loads,
        )
        await self.refresh()
        if self.task is TaskType.CAUSAL_LM:
            self.generation = GenerationScheduler(
                self.generation_runner,
                self.executor,
                max_wait_ms=self.settings.max_batch_wait_ms,
                max_queue_rows=self.settings.max_queue_rows,
            )
            self.generation.start()
        self.batcher = Batcher(
            self.runner.run,
            self.executor,
            max_batch_rows=self.settings.max_batch_rows,
            max_wait_ms=self.settings.max_batch_wait_ms,
            max_queue_rows=self.settings.max_queue_rows,
            regroup_fraction=self.settings.batch_regroup_fraction,
            namespace_queue_rows=self.settings.quota_queued_predict_rows,
        )
        self.batcher.start()
        self._poll_task = loop.create_task(self._poll(), name="registry-poll")
        self.ready = True
        log.info(
            "engine ready",
            base_model=self.source.model_id,
            adapters_known=self.catalog.seq,
            packed_batches=self.task is TaskType.CLASSIFICATION and self.runner.packed,
        )

    async def stop(self) -> None:
        self.ready = False
        if self._poll_task:
            self._poll_task.cancel()
            await asyncio.gather(self._poll_task, return_exceptions=True)
        if self.batcher:
            await self.batcher.stop()
        if self.generation:
            await self.generation.stop()
        if self.loader:
            await asyncio.to_thread(self.loader.shutdown)
        await asyncio.to_thread(self.executor.shutdown, True)

    def _load(self) -> None:
        """Runs on the torch thread: base model, its LoRA bank (every Linear an adapter may
        target gets gathered per-row LoRA: engine/lora_batched.py), warm-up."""
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.source = resolve_base_model(self.settings.base_model)
        if is_causal_lm_path(self.source.path):  # generation: engine/generation_setup.py
            self._load_causal()
            return
        self.tokenizer, encoder = load_encoder(self.source, self.settings.device)
        self.dtype = getattr(torch, self.settings.serving_dtype)
        encoder.to(self.dtype)
        self.task = base_task(encoder)
        self.linear_modules = module_names(encoder)
        self.default_targets = default_target_modules(encoder)
        self.max_positions = int(getattr(encoder.config, "max_position_embeddings", 512))
        bank = LoraBank(
            encoder, self.linear_modules, capacity=self.settings.max_resident_adapters, dtype=self.dtype
        )
        model = encoder
        self.registry = AdapterRegistry(
            model,
            base_model_id=self.source.model_id,
            linear_modules=self.linear_modules,
            hidden_size=encoder.config.hidden_size,
            max_resident=self.settings.max_resident_adapters,
            max_rank=self.settings.max_lora_rank,
            device=self.settings.device,
            dtype=self.dtype,
            bank=bank,
        )
        self.runner = ClassificationRunner(
            self.tokenizer,
            self.registry,
            self.adapter_store,
            device=self.settings.device,
            packed=self.settings.classify_packed and supports_packed(encoder),
        )
        with torch.inference_mode():  # warm-up: first-call allocations happen now, not on a user
            enc = self.tokenizer(["warm up"], return_tensors="pt").to(self.settings.device)
            with bank.selecting([None], self.settings.device):
                model(**enc)
            if self.runner.packed:
                self.runner.pooled(["warm up"], [None])

    def _load_causal(self) -> None:
        from tuneserve_server.engine.generation_setup import load_causal_serving

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        built = load_causal_serving(self.settings, self.source, self.adapter_store)
        self.task = TaskType.CAUSAL_LM
        self.tokenizer, self.dtype, self.registry = built.tokenizer, built.dtype, built.registry
        self.linear_modules, self.default_targets = built.linear_modules, built.default_targets
        self.max_positions = built.max_positions
        self.generation_runner = built.runner
        self.runner = ClassificationRunner(  # answers classify calls only with the task check below
            self.tokenizer, self.registry, self.adapter_store, device=self.settings.device
        )

    def served_model(self) -> ServedModel:
        """The loaded base model as callers see it (GetServerInfo); only once ready."""
        return ServedModel(
            base_model=self.source.model_id,
            task=self.task,
            max_positions=self.max_positions,
            classify_max_tokens=self.runner.max_length if self.task is TaskType.CLASSIFICATION else 0,
            chat_template=self.task is TaskType.CAUSAL_LM and has_chat_template(self.tokenizer),
        )

    def train_limits(self) -> TrainLimits:
        return TrainLimits(
            served_task=self.task,
            base_model=self.source.model_id,
            max_train_examples=self.settings.max_train_examples,
            max_text_chars=self.settings.max_text_chars,
            max_lora_rank=self.settings.max_lora_rank,
            max_search_trials=self.settings.max_search_trials,
            linear_modules=frozenset(self.linear_modules),
            default_targets=self.default_targets,
            max_positions=self.max_positions,
            count_tokens=self._count_tokens,
        )

    def lora_layer_shapes(self) -> dict[str, tuple[int, int]]:
        """{module path: (in_features, out_features)} of every Linear an adapter may target."""
        return self.registry.bank.module_shapes()

    @property
    def hidden_size(self) -> int:
        """Width of the pooled embedding a classification head reads."""
        return self.registry.hidden_size

    async def check_loadable(self, namespace: str, name: str, version: int, directory: Path) -> None:
        """Read and check an adapter directory exactly as a load would (registry.prepare: its
        config against the base, head, uncertainty model, LoRA factors and their shapes) on
        the loader pool; nothing becomes resident."""
        self._require_ready()
        assert self.loader is not None
        key = AdapterKey(namespace, name, version)
        await asyncio.get_running_loop().run_in_executor(
            self.loader.pool, self.registry.prepare, key, directory
        )

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Token lengths for the data report, called from request threads: a private copy of
        the tokenizer (a fast tokenizer must not be shared with the torch thread, which sets
        its padding and truncation), serialised by a lock."""
        with self._counting_lock:
            if self._counting_tokenizer is None:
                self._counting_tokenizer = copy.deepcopy(self.tokenizer)
            ids = self._counting_tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        return [len(x) for x in ids]

    # ------------------------------------------------------------------ registry sync
    async def refresh(self) -> None:
        """Fold in registry changes; unload deleted and superseded versions between batches."""
        while True:
            records, aliases = await asyncio.to_thread(self.store.registry_changes, self.catalog.seq)
            if not records and not aliases:
                return
            deleted, superseded = self.catalog.apply(records, aliases)
            for moved in aliases:
                log.info(
                    "adapter alias moved",
                    adapter=f"{moved.namespace}/{moved.name}@{moved.alias}",
                    version=moved.version,
                )
            for rec in records:
                if not rec.deleted:
                    log.info("adapter version available", adapter=f"{rec.namespace}/{rec.name}@{rec.version}")
            if superseded and self.ready:
                await self._follow_pins(superseded)
            gone = set(deleted) | set(superseded)
            if gone and self.ready:
                # Deleted versions go even if pinned; superseded ones unless pinned by version.
                await self._on_torch_thread(
                    functools.partial(
                        self.registry.unload_where, set(deleted).__contains__, include_pinned=True
                    )
                )
                await self._on_torch_thread(self.registry.unload_where, gone.__contains__)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await self.refresh()
            except Exception:
                log.warning("registry poll failed", exc_info=True)

    async def resolve(self, ref: AdapterRef) -> AdapterVersionRecord:
        try:
            return self.catalog.resolve(ref)
        except NotFound:  # maybe published since the last poll: look once more, now
            await self.refresh()
            return self.catalog.resolve(ref)

    # ------------------------------------------------------------------ residency control
    def _require_ready(self) -> None:
        if not self.ready:
            raise NotReady("the model is still loading; retry shortly")

    async def _on_torch_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def load_adapter(
        self, ref: AdapterRef, *, pin: bool
    ) -> tuple[AdapterVersionRecord, bool, int, float]:
        """Make a version resident (and pinned) here. Returns (record, pinned, bytes, seconds
        spent loading). A pin on a bare name follows the name to new versions."""
        self._require_ready()
        record = await self.resolve(ref)
        key = AdapterKey(record.namespace, record.name, record.version)
        start = time.perf_counter()
        loaded_before = self.registry.get(key) is not None
        assert self.loader is not None
        while True:
            entry = await self.loader.ensure(key)  # store open + reads on the loader threads
            if not pin:
                pinned, size = entry.pinned, entry.size_bytes
                break
            if await self._on_torch_thread(self.registry.set_pinned, key, True):
                pinned, size = True, entry.size_bytes
                break
            # evicted between its install and the pin (a burst of other loads): load it again
        if pin and ref.bare:  # a pin on the bare name follows `default`
            self._pinned_names.add((record.namespace, record.name))
        return record, pinned, size, 0.0 if loaded_before else time.perf_counter() - start

    async def unload_adapter(self, ref: AdapterRef) -> list[int]:
        """Unpin and release `name` (every resident version) or `name@version` here."""
        self._require_ready()
        await self.resolve(AdapterRef(ref.namespace, ref.name))  # NotFound for unknown names
        if ref.alias is not None:  # name@alias: the version it points at
            ref = AdapterRef(ref.namespace, ref.name, (await self.resolve(ref)).version)
        if ref.version is None:
            self._pinned_names.discard((ref.namespace, ref.name))

        def matches(key: AdapterKey) -> bool:
            return (key.namespace, key.name) == (ref.namespace, ref.name) and (
                ref.version is None or key.version == ref.version
            )

        gone = await self._on_torch_thread(
            functools.partial(self.registry.unload_where, matches, include_pinned=True)
        )
        return sorted(k.version for k in gone)

    async def residency(self) -> dict[AdapterKey, tuple[bool, float, int]]:
        """{key: (pinned, last_used, size_bytes)} of what is resident in this process."""
        if not self.ready:
            return {}
        return await self._on_torch_thread(self.registry.snapshot)

    async def _follow_pins(self, superseded: list[AdapterKey]) -> None:
        """A pinned name got a new version: load and pin it before the old one goes."""
        for ns, name in {(k.namespace, k.name) for k in superseded} & self._pinned_names:
            try:
                await self.load_adapter(AdapterRef(ns, name), pin=True)
                for old in (k for k in superseded if (k.namespace, k.name) == (ns, name)):
                    await self._on_torch_thread(self.registry.set_pinned, old, False)
            except Exception:
                log.warning(
                    "could not load the new version of a pinned adapter",
                    adapter=f"{ns}/{name}",
                    exc_info=True,
                )

    # ------------------------------------------------------------------ predict
    async def classify(
        self, ref: AdapterRef | None, texts: list[str], uncertainty: UncertaintyRequest = NO_UNCERTAINTY
    ) -> ClassifyResult:
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
            record = await self.resolve(ref)
            if record.task is not TaskType.CLASSIFICATION:
                raise FailedPrecondition(f"adapter {ref.name} is a {record.task.value} adapter")
            key = AdapterKey(record.namespace, record.name, record.version)
        try:
            if key is not None and self.loader is not None and not self.loader.is_resident(key):
                await self.loader.ensure(key)  # cold: load off the torch thread, then queue
            scores = await self.batcher.submit(key, texts, uncertainty=uncertainty)
        finally:
            label = ADAPTER_LABELS.label(
                BASE_ADAPTER_LABEL if record is None else adapter_label_name(record.namespace, record.name)
            )
            ADAPTER_REQUESTS.labels(label).inc()
            ADAPTER_LATENCY.labels(label).observe(time.perf_counter() - start)
        if uncertainty.abstention:
            UNCERTAINTY_ROWS.labels(label).inc(len(scores))
            ABSTAINED_ROWS.labels(label).inc(sum(s.abstain for s in scores))
        return ClassifyResult(record, scores)

    # ------------------------------------------------------------------ generate (causal LM)
    async def _generation_target(
        self, ref: AdapterRef | None
    ) -> tuple[AdapterVersionRecord | None, AdapterKey | None]:
        if not self.ready or (self.generation is None and self.task is TaskType.CAUSAL_LM):
            raise NotReady("the model is still loading; retry shortly")
        if self.task is not TaskType.CAUSAL_LM or self.generation is None:
            raise FailedPrecondition(
                f"this server serves {self.source.model_id}, a {self.task.value} model; it does not generate text"
            )
        if ref is None:
            return None, None
        record = await self.resolve(ref)
        if record.task is not TaskType.CAUSAL_LM:
            raise FailedPrecondition(f"adapter {ref.name} is a {record.task.value} adapter")
        return record, AdapterKey(record.namespace, record.name, record.version)

    async def generate(
        self, ref: AdapterRef | None, prompts: list[Prompt], params: SamplingParams
    ) -> tuple[AdapterVersionRecord | None, list[GenerationResult]]:
        """Complete every prompt (each a row of the shared decoding loop); a cancelled call
        cancels its rows."""
        start = time.perf_counter()
        record, key = await self._generation_target(ref)
        assert self.generation is not None
        streams = self.generation.open_many(key, prompts, params)
        waits = [asyncio.ensure_future(s.wait()) for s in streams]
        try:
            results = list(await asyncio.gather(*waits))
        finally:  # one row failed or the call was cancelled: stop the others too
            for s, w in zip(streams, waits, strict=True):
                if s.result is None:
                    s.cancel()
                w.cancel()
            self._observe(record, start)
        return record, results

    async def open_stream(
        self, ref: AdapterRef | None, prompt: Prompt, params: SamplingParams
    ) -> tuple[AdapterVersionRecord | None, RowStream]:
        """Queue one prompt; iterate `stream.events()` for its deltas and final result."""
        record, key = await self._generation_target(ref)
        assert self.generation is not None
        return record, self.generation.open(key, prompt, params)

    def _observe(self, record: AdapterVersionRecord | None, start: float) -> None:
        label = ADAPTER_LABELS.label(
            BASE_ADAPTER_LABEL if record is None else adapter_label_name(record.namespace, record.name)
        )
        ADAPTER_REQUESTS.labels(label).inc()
        ADAPTER_LATENCY.labels(label).observe(time.perf_counter() - start)
