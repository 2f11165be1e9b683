"""Gathered batched LoRA (the Punica / S-LoRA way): every resident adapter's LoRA factors are
stacked per layer, and one forward pass applies a different adapter to each row.

For each targeted `nn.Linear` the bank holds A: (rows, in, r) and B: (rows, r, out), with the
scaling folded into B and ranks padded with zeros to the largest rank resident on that layer.
Row 0 is all zeros (the base model). A batch names one bank row per input row; each layer then
adds `bmm(bmm(x, A[rows]), B[rows])` to the base layer's output: one gather and two batched
products per layer, however many adapters the batch mixes (peft's `adapter_names=` path instead
loops over the distinct adapters in every layer). The base weights are never copied.

Over packed tokens (engine/packed.py) the runner orders rows by adapter, so each adapter's
tokens form runs. Up to LOOP_MAX_ADAPTERS distinct adapters, each run gets one addmm pair per
layer; above it (one product pair per run per layer adds up: 16 adapters x 36 Linears), the
tokens are grouped by adapter into one padded (adapters, longest, in) layout, built once per
forward (`TokenGroups`), and each layer does one gather and two bmm calls. Thresholds measured
on a 2-core AVX512-BF16 CPU with MiniLM, r=16, 16 Banking77 rows (docs/benchmarks.md).

Reading an adapter's files (`read_lora`) touches no shared state and may run on any thread;
`install` / `remove` / forward passes must all run on the one torch thread."""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tuneserve_server.domain.errors import FailedPrecondition

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"
MIN_ROWS = 4  # smallest bank (row 0 + 3 adapters) once any adapter is resident
# Packed forwards with more distinct adapters than this apply LoRA as one padded bmm pair per
# layer; up to it, one addmm pair per run of tokens is cheaper (docs/benchmarks.md, serving).
LOOP_MAX_ADAPTERS = {torch.float32: 8, torch.bfloat16: 2, torch.float16: 2}


def release_freed_memory() -> None:
    """Hand memory freed by dropped bank tensors back to the OS (glibc keeps it otherwise:
    RSS would stay at its high-water mark after adapters are unloaded). A no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's factors, ready to install: {module path: (A^T (in, r), scaling * B^T (r, out))}."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.factors.values()
        )


def unsupported_features(config: Mapping[str, Any]) -> list[str]:
    """What an adapter_config.json asks for that the gathered product cannot reproduce
    exactly (empty: it can be served)."""
    return [
        what
        for what, bad in (
            ("peft_type other than LORA", config.get("peft_type", "LORA") != "LORA"),
            ("DoRA", bool(config.get("use_dora"))),
            ("LoRA biases", config.get("bias", "none") != "none" or bool(config.get("lora_bias"))),
            ("alpha_pattern", bool(config.get("alpha_pattern"))),
            ("modules_to_save", bool(config.get("modules_to_save"))),
            ("fan_in_fan_out", bool(config.get("fan_in_fan_out"))),
            ("layer_replication", bool(config.get("layer_replication"))),
            ("target_parameters", bool(config.get("target_parameters"))),
        )
        if bad
    ]


def read_lora(
    directory: Path,
    *,
    dtype: torch.dtype,
    module_paths: Iterable[str],
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> LoraWeights:
    """Read a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) for the bank.
    Refuses what the gathered product cannot reproduce exactly (DoRA, LoRA biases, per-module
    alpha, extra trained modules), layers the served model has no Linear for and, with
    `shapes` ({module path: (in_features, out_features)}), factors that do not fit them."""
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    unsupported = unsupported_features(config)
    if unsupported:
        raise FailedPrecondition(f"adapter uses {', '.join(unsupported)}, which serving does not support")
    alpha = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora"))
    tensors = load_file(str(directory / ADAPTER_WEIGHTS), device="cpu")
    known = set(module_paths)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        stem = name.removeprefix(_PREFIX)
        for suffix, part in ((_A_SUFFIX, "A"), (_B_SUFFIX, "B")):
            if stem.endswith(suffix):
                pairs.setdefault(stem[: -len(suffix)], {})[part] = value
                break
        else:
            raise FailedPrecondition(f"adapter weight {name} is not a LoRA factor of a Linear layer")
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, pair in pairs.items():
        if path not in known:
            raise FailedPrecondition(f"adapter has LoRA weights for {path}, a layer the served model lacks")
        if set(pair) != {"A", "B"}:
            raise FailedPrecondition(f"adapter has only half of the LoRA pair for {path}")
        a, b = pair["A"], pair["B"]  # peft: A (r, in), B (out, r)
        if a.dim() != 2 or b.dim() != 2:
            raise FailedPrecondition(f"adapter's LoRA factors for {path} are not matrices")
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise FailedPrecondition(f"adapter's LoRA factors for {path} disagree on the rank")
        if shapes is not None and path in shapes:
            fan_in, fan_out = shapes[path]
            if a.shape[1] != fan_in or b.shape[0] != fan_out:
                raise FailedPrecondition(
                    f"adapter's LoRA factors for {path} are {tuple(a.shape)} (A) and {tuple(b.shape)} "
                    f"(B); the served model's layer takes ({rank}, {fan_in}) and ({fan_out}, {rank})"
                )
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        factors[path] = (
            a.float().t().contiguous().to(dtype),
            (b.float() * scaling).t().contiguous().to(dtype),
        )
    return LoraWeights(factors)


@dataclass(frozen=True)
class TokenGroups:
    """Packed tokens grouped by adapter for the batched LoRA product: group g holds adapter
    `rows[g]`'s tokens (in packed order), padded to the longest group with copies of a real
    token whose products are dropped. Built once per forward, shared by every layer."""

    rows: torch.Tensor  # (count,) bank row of each group
    gather: torch.Tensor  # (count * longest,) packed token at each padded position
    real: torch.Tensor | None  # (n,) padded positions holding real tokens
    tokens: torch.Tensor | None  # (n,) the packed token at each of those positions
    count: int
    longest: int
    row_set: frozenset[int]

    @classmethod
    def of(
        cls, segments: Sequence[tuple[int, int, int]], total: int, device: str | torch.device
    ) -> TokenGroups:
        by_row: dict[int, list[int]] = {}
        for start, end, row in segments:
            if row:
                by_row.setdefault(row, []).extend(range(start, end))
        longest = max(len(t) for t in by_row.values())
        gather: list[int] = []
        real: list[int] = []
        tokens: list[int] = []
        for g, toks in enumerate(by_row.values()):
            gather += toks + [toks[0]] * (longest - len(toks))
            real += range(g * longest, g * longest + len(toks))
            tokens += toks
        in_order = len(gather) == total and tokens == list(range(total))  # also: no padding
        as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        return cls(
            rows=as_tensor(list(by_row)),
            gather=as_tensor(gather),
            real=None if in_order else as_tensor(real),
            tokens=None if in_order else as_tensor(tokens),
            count=len(by_row),
            longest=longest,
            row_set=frozenset(by_row),
        )


class GatheredLoraLinear(torch.nn.Module):
    """A base Linear plus the bank's stacked factors for it. Holds the base layer itself (no
    copy); A and B are plain attributes, not parameters or buffers."""

    def __init__(self, base: torch.nn.Linear, bank: LoraBank) -> None:
        super().__init__()
        self.base = base
        self.bank = (bank,)  # a tuple: not registered as a submodule
        self.A: torch.Tensor | None = None  # (rows, in, r)
        self.B: torch.Tensor | None = None  # (rows, r, out)
        self.ranks: dict[int, int] = {}  # bank row -> that adapter's rank on this layer

    @property
    def weight(self) -> torch.Tensor:  # code that inspects `layer.weight` (dtype, device) still works
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        a_all, b_all = self.A, self.B
        bank = self.bank[0]
        if a_all is None:
            return out
        if bank.segments is not None:  # packed tokens: one contiguous run of tokens per adapter
            x2 = x.reshape(-1, x.shape[-1])
            out2 = out.view(-1, out.shape[-1])
            groups = bank.groups
            if groups is None:  # few runs: one product pair per run
                for start, end, row in bank.segments:
                    if row in self.ranks:
                        out2[start:end].addmm_(x2[start:end] @ a_all[row], b_all[row])
                return out
            if self.ranks.keys().isdisjoint(groups.row_set):
                return out
            # Many adapters: each adapter's tokens padded to one group, two batched products.
            # Rows an adapter leaves out of this layer are zeros in A/B: they add exactly 0.
            xp = x2.index_select(0, groups.gather).view(groups.count, groups.longest, x2.shape[-1])
            xa = torch.bmm(xp, a_all.index_select(0, groups.rows))
            delta = torch.bmm(xa, b_all.index_select(0, groups.rows)).view(-1, out2.shape[-1])
            if groups.tokens is None:  # the groups are the packed tokens in order, no padding
                out2.add_(delta)
            else:
                out2.index_add_(0, groups.tokens, delta.index_select(0, groups.real))
            return out
        if bank.batch_rows is None:
            return out
        if bank.single_row is not None:  # every row names the same adapter: no gather needed
            if bank.single_row not in self.ranks:
                return out
            return out + (x @ a_all[bank.single_row]) @ b_all[bank.single_row]
        rows = bank.batch_rows
        a = a_all.index_select(0, rows)
        b = b_all.index_select(0, rows)
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(x3, a), b)
        return out + delta.view(out.shape)

    def nbytes(self) -> int:
        if self.A is None:
            return 0
        return self.A.numel() * self.A.element_size() + self.B.numel() * self.B.element_size()

    # -------------------------------------------------- storage (torch thread only)
    def _resize(self, rows: int, rank: int) -> None:
        """Reallocate to (rows, ..., rank), keeping what fits; rank 0 drops the tensors."""
        if rank == 0:
            self.A = self.B = None
            return
        ref = self.base.weight
        a = torch.zeros(rows, self.in_features, rank, dtype=self.bank[0].dtype, device=ref.device)
        b = torch.zeros(rows, rank, self.out_features, dtype=self.bank[0].dtype, device=ref.device)
        if self.A is not None:
            n, r = min(rows, self.A.shape[0]), min(rank, self.A.shape[2])
            a[:n, :, :r] = self.A[:n, :, :r]
            b[:n, :r, :] = self.B[:n, :r, :]
        self.A, self.B = a, b

    def rank(self) -> int:
        return 0 if self.A is None else self.A.shape[2]

    def put(self, row: int, a_t: torch.Tensor, b_t: torch.Tensor, rows: int) -> None:
        rank = a_t.shape[1]
        if rank > self.rank() or self.A is None or self.A.shape[0] != rows:
            self._resize(rows, max(rank, self.rank()))
        self.A[row].zero_()
        self.B[row].zero_()
        self.A[row, :, :rank] = a_t.to(self.A.device)
        self.B[row, :rank, :] = b_t.to(self.B.device)
        self.ranks[row] = rank

    def clear(self, row: int) -> None:
        if self.ranks.pop(row, None) is None:
            return
        self.A[row].zero_()
        self.B[row].zero_()
        needed = max(self.ranks.values(), default=0)
        if needed < self.rank():  # the widest adapter left: shrink the padding with it
            self._resize(self.A.shape[0], needed)

    def move(self, src: int, dst: int) -> None:
        if src in self.ranks:
            self.A[dst] = self.A[src]
            self.B[dst] = self.B[src]
            self.A[src].zero_()
            self.B[src].zero_()
            self.ranks[dst] = self.ranks.pop(src)

    def set_rows(self, rows: int) -> None:
        if self.A is not None and self.A.shape[0] != rows:
            self._resize(rows, self.rank())


class LoraBank:
    """The stacked factors of every resident adapter, one bank row per adapter (row 0: none).
    Rows grow by doubling up to `capacity` adapters and shrink (compacting) as adapters leave,
    so memory follows the resident set; ranks pad to the widest resident adapter per layer."""

    def __init__(
        self, model: torch.nn.Module, target_names: Iterable[str], *, capacity: int, dtype: torch.dtype
    ) -> None:
        self.capacity = capacity
        self.dtype = dtype
        self.layers: dict[str, GatheredLoraLinear] = {}
        targets = set(target_names)
        for path, module in list(model.named_modules()):
            short = path.rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.Linear) and short in targets and path:
                parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
                wrapper = GatheredLoraLinear(module, self)
                setattr(parent, short, wrapper)
                self.layers[path] = wrapper
        self._row_of: dict[str, int] = {}  # slot id -> bank row
        self._rows = 1  # allocated rows, row 0 included
        self.batch_rows: torch.Tensor | None = None  # per input row: bank row (during a forward)
        self.single_row: int | None = None  # set when every input row names the same bank row
        # Packed forward (engine/packed.py): (first token, end token, bank row) per run of tokens.
        self.segments: list[tuple[int, int, int]] | None = None
        # ... and, above `loop_max_adapters` distinct adapters, their tokens grouped for bmm.
        self.groups: TokenGroups | None = None
        self.loop_max_adapters = LOOP_MAX_ADAPTERS.get(dtype, 4)

    # -------------------------------------------------- queries
    def __contains__(self, slot: str) -> bool:
        return slot in self._row_of

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def allocated_rows(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers.values())

    def module_paths(self) -> set[str]:
        return set(self.layers)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """{module path: (in_features, out_features)} of every layer an adapter may target."""
        return {path: (layer.in_features, layer.out_features) for path, layer in self.layers.items()}

    # -------------------------------------------------- changes (torch thread)
    def install(self, slot: str, weights: LoraWeights) -> None:
        if slot in self._row_of:
            raise ValueError(f"slot {slot} is already in the bank")
        if len(self._row_of) >= self.capacity:
            raise FailedPrecondition(f"the LoRA bank is full ({self.capacity} adapters)")
        missing = set(weights.factors) - set(self.layers)
        if missing:
            raise FailedPrecondition(
                f"adapter has LoRA weights for layers the served model lacks: {sorted(missing)}"
            )
        used = set(self._row_of.values())
        row = next(r for r in range(1, self.capacity + 2) if r not in used)
        if row >= self._rows:
            self._set_rows(min(self.capacity + 1, max(MIN_ROWS, 2 * self._rows, row + 1)))
        for path, (a_t, b_t) in weights.factors.items():
            self.layers[path].put(row, a_t, b_t, self._rows)
        self._row_of[slot] = row

    def remove(self, slot: str) -> bool:
        row = self._row_of.pop(slot, None)
        if row is None:
            return False
        for layer in self.layers.values():
            layer.clear(row)
        used = len(self._row_of) + 1
        if not self._row_of or (self._rows > MIN_ROWS and used * 4 <= self._rows):
            self._compact(max(MIN_ROWS, self._rows // 2))
        return True

    def _set_rows(self, rows: int) -> None:
        self._rows = rows
        for layer in self.layers.values():
            layer.set_rows(rows)

    def _compact(self, rows: int) -> None:
        """Move every adapter into rows 1..n, then shrink the tensors to `rows`."""
        if not self._row_of:
            self._rows = 1
            for layer in self.layers.values():
                layer._resize(1, 0)
            release_freed_memory()
            return
        for new, slot in enumerate(sorted(self._row_of, key=self._row_of.__getitem__), start=1):
            old = self._row_of[slot]
            if old != new:
                for layer in self.layers.values():
                    layer.move(old, new)
                self._row_of[slot] = new
        self._set_rows(rows)
        release_freed_memory()

    # -------------------------------------------------- forward
    @contextmanager
    def selecting(self, slots: Sequence[str | None], device: str | torch.device = "cpu") -> Iterator[None]:
        """Within the block, input row i of a forward pass uses adapter `slots[i]` (None: the base)."""
        rows = [0 if s is None else self._row_of[s] for s in slots]
        self.single_row = rows[0] if all(r == rows[0] for r in rows) else None
        self.batch_rows = torch.tensor(rows, dtype=torch.long, device=device)
        try:
            yield
        finally:
            self.batch_rows = None
            self.single_row = None

    @contextmanager
    def selecting_tokens(self, slots: Sequence[str | None], lengths: Sequence[int]) -> Iterator[None]:
        """Within the block, a forward pass over packed tokens (sequence i's `lengths[i]`
        tokens after sequence i-1's) uses adapter `slots[i]` for sequence i's tokens. Adjacent
        sequences of one adapter form one run: order the sequences by adapter for fewest."""
        segments: list[tuple[int, int, int]] = []
        start = 0
        for slot, length in zip(slots, lengths, strict=True):
            row = 0 if slot is None else self._row_of[slot]
            if segments and segments[-1][2] == row:
                segments[-1] = (segments[-1][0], start + length, row)
            elif row:
                segments.append((start, start + length, row))
            else:  # the base model: no LoRA product, but a run boundary
                segments.append((start, start + length, 0))
            start += length
        distinct = {row for _, _, row in segments if row}
        self.segments = segments
        if len(distinct) > self.loop_max_adapters and self.layers:
            device = next(iter(self.layers.values())).base.weight.device
            self.groups = TokenGroups.of(segments, start, device)
        try:
            yield
        finally:
            self.segments = None
            self.groups = None
