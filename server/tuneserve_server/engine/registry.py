"""Which adapters are resident in the one base model, under internal slot ids.

Every state change here runs on the torch executor thread (one thread), so a batch in
progress and a load/evict/unload never interleave: an adapter a batch uses cannot be evicted
under it. User-facing names never reach the model; each resident version gets a slot id `s<N>`.

A load has two steps: `prepare` (read the adapter's files, check them against the base,
read the head and LoRA factors; touches no shared state, so it may run on any thread) and
`install` (the cheap step that puts them into a slot; torch thread). `ensure` does both.

The LoRA weights live in a `LoraBank` (engine/lora_batched.py): the adapters' factors are
stacked per layer and a mixed batch is one gathered product per layer. (The tests check it
against peft's own `adapter_names=` mixed batches.)

Pinning never takes the last free slots: at least `pin_reserve` slots stay unpinned (by
default `unpinned_reserve(max_resident)`: a quarter of them, at least 2), so the adapters
nobody pinned still load and rotate through the cache whatever the pins. A pin past that is
refused with FailedPrecondition. (The per-tenant cap, quota_pinned_adapters, is checked by
services/adapters.py where LoadAdapter pins.)"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.engine.lora_batched import LoraBank, LoraWeights, read_lora
from tuneserve_server.modeling import AdapterMeta, load_head
from tuneserve_server.observability.metrics import (
    ADAPTER_EVICTIONS,
    ADAPTER_LOAD_FAILURES,
    ADAPTER_LOAD_SECONDS,
    ADAPTER_LOADS,
    ADAPTERS_RESIDENT,
    ADAPTERS_RESIDENT_BYTES,
)
from tuneserve_server.uncertainty import UncertaintyModel


def unpinned_reserve(max_resident: int) -> int:
    """Slots that stay unpinned: a quarter of the cache, at least 2."""
    return max(2, max_resident // 4)


@dataclass(frozen=True, order=True)
class AdapterKey:
    namespace: str
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"


@dataclass
class ResidentAdapter:
    key: AdapterKey
    slot: str
    meta: AdapterMeta
    head: torch.nn.Linear | None  # None for causal-LM adapters
    size_bytes: int
    last_used: float = field(default_factory=time.time)
    pinned: bool = False
    # Classification: conformal calibration, abstention and OOD detector (None: not fitted).
    uncertainty: UncertaintyModel | None = None


@dataclass
class PreparedAdapter:
    """An adapter read from its directory and checked, not yet resident (see `prepare`)."""

    key: AdapterKey
    meta: AdapterMeta
    head: torch.nn.Linear | None  # None for causal-LM adapters
    lora: LoraWeights
    seconds: float  # spent preparing
    uncertainty: UncertaintyModel | None = None


class AdapterRegistry:
    def __init__(
        self,
        model: torch.nn.Module,
        *,
        bank: LoraBank,
        base_model_id: str,
        linear_modules: set[str],
        hidden_size: int,
        max_resident: int,
        max_rank: int,
        device: str,
        dtype: torch.dtype = torch.float32,
        pin_reserve: int | None = None,
    ) -> None:
        self.model = model  # the base model; `bank` has wrapped its targeted Linear layers
        self.bank = bank
        self.base_model_id = base_model_id
        self.linear_modules = linear_modules
        self.hidden_size = hidden_size
        self.max_resident = max_resident
        self.pin_reserve = unpinned_reserve(max_resident) if pin_reserve is None else pin_reserve
        self.max_rank = max_rank
        self.device = device
        self.dtype = dtype
        self._resident: OrderedDict[AdapterKey, ResidentAdapter] = OrderedDict()
        self._next_slot = 0
        self._resident_bytes = 0
        self.loads = 0
        self.evictions = 0

    # ------------------------------------------------------------------ queries
    def get(self, key: AdapterKey) -> ResidentAdapter | None:
        return self._resident.get(key)

    def resident_keys(self) -> list[AdapterKey]:
        return list(self._resident)

    def __len__(self) -> int:
        return len(self._resident)

    @property
    def resident_bytes(self) -> int:
        return self._resident_bytes

    # ------------------------------------------------------------------ checks
    def check_compatible(self, key: AdapterKey, meta: AdapterMeta) -> None:
        """Refuse an adapter that was not trained for this base model, before any weights load."""
        problems = []
        if meta.base_model != self.base_model_id:
            problems.append(f"trained on {meta.base_model}, this server serves {self.base_model_id}")
        missing = sorted(set(meta.target_modules) - self.linear_modules)
        if missing:
            problems.append(f"targets modules the base model lacks: {', '.join(missing)}")
        if meta.lora_rank > self.max_rank:
            problems.append(f"rank {meta.lora_rank} is above the server's maximum {self.max_rank}")
        if problems:
            raise FailedPrecondition(f"adapter {key} cannot be served: {'; '.join(problems)}")

    # ------------------------------------------------------------------ state changes
    def ensure(
        self, key: AdapterKey, directory: Path | None, keep: Iterable[AdapterKey] = ()
    ) -> ResidentAdapter:
        """Make `key` resident (loading from `directory` if needed) and mark it used;
        `directory` may be None only when `key` is resident."""
        entry = self._resident.get(key)
        if entry is None:
            if directory is None:
                raise ValueError(f"adapter {key} is not resident and no directory was given")
            try:
                prepared = self.prepare(key, directory)
            except Exception:
                ADAPTER_LOAD_FAILURES.inc()
                raise
            entry = self.install(prepared, set(keep) | {key})
        entry.last_used = time.time()
        self._resident.move_to_end(key)
        return entry

    def prepare(self, key: AdapterKey, directory: Path) -> PreparedAdapter:
        """Read and check an adapter without touching the model or the registry's state (any
        thread): its config against the base, its head, and its LoRA factors in the serving
        dtype."""
        start = time.perf_counter()
        meta = AdapterMeta.read(directory)
        self.check_compatible(key, meta)
        head = None  # causal-LM adapters have no head: the base model's LM head serves them
        uncertainty = None
        if meta.task is not TaskType.CAUSAL_LM:
            head = load_head(directory, self.device)
            if head.in_features != self.hidden_size or head.out_features != len(meta.labels):
                raise FailedPrecondition(f"adapter {key} has a head that does not fit its labels or the base")
            head = head.to(self.dtype)
            uncertainty = UncertaintyModel.load(directory)
            if uncertainty is not None and uncertainty.calibration.num_labels != len(meta.labels):
                raise FailedPrecondition(f"adapter {key} has an uncertainty calibration for other labels")
        try:
            lora = read_lora(
                directory,
                dtype=self.dtype,
                module_paths=self.bank.module_paths(),
                shapes=self.bank.module_shapes(),
            )
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"adapter {key} cannot be served: {exc}") from None
        return PreparedAdapter(key, meta, head, lora, time.perf_counter() - start, uncertainty)

    def install(self, prepared: PreparedAdapter, keep: Iterable[AdapterKey] = ()) -> ResidentAdapter:
        """Torch thread: put a prepared adapter into a slot (evicting by LRU if needed) and
        mark it used. A key that is already resident stays as it is."""
        key = prepared.key
        entry = self._resident.get(key)
        if entry is None:
            start = time.perf_counter()
            try:
                entry = self._install(prepared, set(keep) | {key})
            except Exception:
                ADAPTER_LOAD_FAILURES.inc()
                raise
            ADAPTER_LOADS.inc()
            ADAPTER_LOAD_SECONDS.observe(prepared.seconds + time.perf_counter() - start)
        entry.last_used = time.time()
        self._resident.move_to_end(key)
        return entry

    def _install(self, prepared: PreparedAdapter, keep: set[AdapterKey]) -> ResidentAdapter:
        key, head = prepared.key, prepared.head
        self._make_room(keep)
        slot = f"s{self._next_slot}"
        self._next_slot += 1
        self.bank.install(slot, prepared.lora)
        size = prepared.lora.nbytes
        if head is not None:
            size += sum(p.numel() * p.element_size() for p in head.parameters())
        if prepared.uncertainty is not None:
            size += prepared.uncertainty.nbytes
        entry = ResidentAdapter(key, slot, prepared.meta, head, size, uncertainty=prepared.uncertainty)
        self._resident[key] = entry
        self._resident_bytes += size
        self.loads += 1
        self._publish()
        return entry

    def _publish(self) -> None:
        ADAPTERS_RESIDENT.set(len(self._resident))
        ADAPTERS_RESIDENT_BYTES.set(self._resident_bytes)

    def _make_room(self, keep: set[AdapterKey]) -> None:
        while len(self._resident) >= self.max_resident:
            victim = next((k for k, e in self._resident.items() if not e.pinned and k not in keep), None)
            if victim is None:
                raise FailedPrecondition(
                    f"all {len(self._resident)} resident adapter slots are pinned or in use"
                )
            self.unload(victim)
            self.evictions += 1
            ADAPTER_EVICTIONS.inc()

    def unload(self, key: AdapterKey) -> bool:
        entry = self._resident.pop(key, None)
        if entry is None:
            return False
        self._resident_bytes -= entry.size_bytes
        self._publish()
        self.bank.remove(entry.slot)
        # Dropping the last references frees the slot's tensors and head at once (refcounting;
        # the unit tests check it). No gc.collect(): a full collection costs ~0.4 s with
        # transformers loaded and would stall every batch queued behind this executor thread.
        del entry
        return True

    def unload_where(self, predicate, *, include_pinned: bool = False) -> list[AdapterKey]:
        """Unload every resident key matching `predicate` (pinned ones only if asked)."""
        gone = [k for k, e in self._resident.items() if (include_pinned or not e.pinned) and predicate(k)]
        for key in gone:
            self.unload(key)
        return gone

    def pinned_count(self, namespace: str | None = None) -> int:
        return sum(
            1
            for k, e in self._resident.items()
            if e.pinned and (namespace is None or k.namespace == namespace)
        )

    def set_pinned(self, key: AdapterKey, pinned: bool) -> bool:
        """Pin or unpin a resident version; False when it is not resident. A pin that would
        leave fewer than `pin_reserve` unpinned slots raises FailedPrecondition."""
        entry = self._resident.get(key)
        if entry is None:
            return False
        if pinned and not entry.pinned:
            allowed = self.max_resident - self.pin_reserve
            if self.pinned_count() >= allowed:
                raise FailedPrecondition(
                    f"cannot pin {key.namespace}/{key.name}@{key.version}: "
                    f"{self.pinned_count()} of the {self.max_resident} adapter cache slots are pinned and "
                    f"{self.pin_reserve} must stay unpinned for the adapters nobody pinned "
                    f"(at most {max(allowed, 0)} pins); unpin one first"
                )
        entry.pinned = pinned
        return True

    def snapshot(self) -> dict[AdapterKey, tuple[bool, float, int]]:
        """{key: (pinned, last_used, size_bytes)} of every resident adapter."""
        return {k: (e.pinned, e.last_used, e.size_bytes) for k, e in self._resident.items()}
