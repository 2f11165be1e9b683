"""ExportAdapter and ImportAdapter: adapters that leave and enter in peft's own format.

The adapter store keeps every version in peft's layout already (the recipes call
`save_pretrained`: adapter_config.json + adapter_model.safetensors), next to tuneserve's own
files: head.safetensors (classification: the linear head over the mean-pooled last hidden
states, tensors `weight` (labels, hidden) and `bias` (labels)), tuneserve.json and, when
fitted, uncertainty.safetensors. An export is those files as stored, with adapter_config.json's
`base_model_name_or_path` set to the served model's id (the stored copy names the local path
the worker loaded it from), tuneserve.json extended with the version, lineage and a data
report summary, and a README.md model card, packed as a flat .tar.gz (storage/adapter_archive).

An import takes an archive of the same shape (an export, or a plain peft directory the client
packs, with the labels and head of a classifier) and checks it before anything is stored:
safetensors only (a pickle-format file is refused by name), the base model id equal to the
served one (the comparison serving makes: registry.check_compatible), every LoRA factor for a
Linear layer of the served model with that layer's shape, the rank within max_lora_rank, and a
classifier's labels and head consistent with each other and the base. It is then published the
way the worker publishes a trained version (reserve a version number, AdapterStore.publish,
JobStore.register_adapter_version) and served, promoted and deleted like one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors.torch import load_file

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest, Violations
from tuneserve_server.domain.jobs import TaskType
from tuneserve_server.domain.naming import AdapterRef, check_name
from tuneserve_server.domain.records import AdapterVersionRecord
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.engine.lora_batched import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    read_lora,
    unsupported_features,
)
from tuneserve_server.modeling import ADAPTER_META, HEAD_FILE, AdapterMeta
from tuneserve_server.observability.audit import audit
from tuneserve_server.services.quotas import check
from tuneserve_server.services.readiness import require_ready
from tuneserve_server.storage import adapter_archive
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.uncertainty import UNCERTAINTY_FILE

log = structlog.get_logger("tuneserve.adapters")

MODEL_CARD = "README.md"
# What an archive may hold. README.md is accepted and dropped: an export writes its own.
ACCEPTED = frozenset({ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_FILE, ADAPTER_META, UNCERTAINTY_FILE, MODEL_CARD})
# Formats that unpickle on load; refused by name, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5")
CHUNK_BYTES = 1 << 20
MAX_SEQ_LENGTH = 128  # what serving truncates classification inputs to (engine/classifier.py)


# ---------------------------------------------------------------- import request parts
@dataclass(frozen=True)
class ImportHeader:
    namespace: str
    name: str
    size_bytes: int
    sha256: str
    labels: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: tuneserve.json's, else 1


@dataclass(frozen=True)
class ArchiveChunk:
    offset: int
    data: bytes


ImportPart = ImportHeader | ArchiveChunk | None  # None: a message that is neither


# ---------------------------------------------------------------- export
@dataclass
class Export:
    record: AdapterVersionRecord
    size_bytes: int
    sha256: str
    files: list[str]
    path: Path = field(repr=False)

    async def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, bytes) of the archive, read a chunk at a time off the event loop."""
        fh = await asyncio.to_thread(open, self.path, "rb")
        try:
            offset = 0
            while data := await asyncio.to_thread(fh.read, chunk_bytes):
                yield offset, data
                offset += len(data)
        finally:
            fh.close()


class AdapterTransferService:
    def __init__(
        self,
        store: JobStore,
        adapter_store: AdapterStore,
        engine: InferenceEngine,
        *,
        max_adapter_bytes: int,
        quotas: Quotas,
    ) -> None:
        self.store = store
        self.adapter_store = adapter_store
        self.engine = engine
        self.max_bytes = max_adapter_bytes
        self.quotas = quotas

    # ------------------------------------------------------------ export
    @asynccontextmanager
    async def export(self, ref: AdapterRef) -> AsyncIterator[Export]:
        """The archive of `name` (latest) or `name@version`, in a temporary file that is
        removed when the context ends. NotFound for a version not in `ref.namespace`."""
        record = await self.engine.resolve(ref)
        source = await asyncio.to_thread(
            self.adapter_store.open, record.namespace, record.name, record.version
        )
        work = await asyncio.to_thread(self.adapter_store.staging_dir)
        try:
            files = work / "files"
            names = await asyncio.to_thread(self._export_files, record, source, files)
            archive = work / "adapter.tar.gz"
            size, sha = await asyncio.to_thread(adapter_archive.pack, files, names, archive)
            audit(
                "adapter.export",
                namespace=record.namespace,
                adapter=record.name,
                version=record.version,
                size_bytes=size,
            )
            yield Export(record, size, sha, sorted(names), archive)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    def _export_files(self, record: AdapterVersionRecord, source: Path, out: Path) -> list[str]:
        out.mkdir()
        names = []
        for name in (ADAPTER_WEIGHTS, HEAD_FILE, UNCERTAINTY_FILE):
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
                names.append(name)
        config = json.loads((source / ADAPTER_CONFIG).read_text())
        config["base_model_name_or_path"] = record.base_model
        config["inference_mode"] = True
        (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        meta = json.loads((source / ADAPTER_META).read_text())
        meta.setdefault("lineage", {"source": "trained", "job_id": record.job_id})
        meta.update(
            adapter={
                "namespace": record.namespace,
                "name": record.name,
                "version": record.version,
                "created_at": record.created_at.isoformat(),
            },
            exported_at=datetime.now(UTC).isoformat(),
            base_model_revision=config.get("revision"),  # None: the served model's, unrecorded
        )
        if meta["task"] == TaskType.CLASSIFICATION.value:
            meta["head"] = {
                "file": HEAD_FILE,
                "input": "attention-masked mean of the base model's last hidden states",
                "logits": "pooled @ weight.T + bias",
                "probabilities": "softmax(logits / temperature)",
                "max_seq_length": MAX_SEQ_LENGTH,
            }
        report = self._data_report_summary(record)
        if report:
            meta["data_report"] = report
        (out / ADAPTER_META).write_text(json.dumps(meta, indent=2))
        (out / MODEL_CARD).write_text(model_card(meta, (source / UNCERTAINTY_FILE).is_file()))
        return [*names, ADAPTER_CONFIG, ADAPTER_META, MODEL_CARD]

    def _data_report_summary(self, record: AdapterVersionRecord) -> dict[str, Any]:
        """The trained-on data in numbers (no texts): the job's report, scalars and label counts."""
        if not record.job_id:
            return {}
        try:
            report = self.store.get_job(record.namespace, record.job_id).data_report
        except Exception:  # the job is gone (or never was in this store): no summary
            return {}
        out: dict[str, Any] = {
            k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) and k != "summary"
        }
        if isinstance(report.get("labels"), list):
            out["labels"] = report["labels"]
        return out

    # ------------------------------------------------------------ import
    async def import_adapter(self, parts: AsyncIterator[ImportPart]) -> AdapterVersionRecord:
        """One ImportAdapter stream: a header, then the archive in chunks. Returns the new
        version's record once it is published."""
        require_ready(self.engine)
        header = await anext(aiter(parts), None)
        if not isinstance(header, ImportHeader):
            raise InvalidRequest.field("header", "the first message of an import must be the header")
        self._check_header(header)
        structlog.contextvars.bind_contextvars(adapter=header.name)
        await self._check_quota(header.namespace)
        work = await asyncio.to_thread(self.adapter_store.staging_dir)
        staged = await asyncio.to_thread(self.adapter_store.staging_dir)
        try:
            archive = work / "adapter.tar.gz"
            await self._receive(header, parts, archive)
            names = await asyncio.to_thread(adapter_archive.unpack, archive, staged, max_bytes=self.max_bytes)
            meta, lineage = await asyncio.to_thread(self._check_files, staged, names, header)
            await self.engine.check_loadable(header.namespace, header.name, 0, staged)
            version = await asyncio.to_thread(
                self.store.reserve_adapter_version, header.namespace, header.name
            )
            size = await asyncio.to_thread(
                self.adapter_store.publish, staged, header.namespace, header.name, version
            )
            record = AdapterVersionRecord(
                namespace=header.namespace,
                name=header.name,
                version=version,
                job_id="",
                task=meta.task,
                base_model=meta.base_model,
                labels=meta.labels,
                metrics=meta.metrics,
                lora_rank=meta.lora_rank,
                size_bytes=size,
                created_at=datetime.now(UTC),
            )
            await asyncio.to_thread(self.store.register_adapter_version, record)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
            await asyncio.to_thread(shutil.rmtree, staged, True)  # gone already once published
        await self.engine.refresh()
        audit(
            "adapter.import",
            namespace=record.namespace,
            adapter=record.name,
            version=version,
            size_bytes=size,
            import_id=lineage["import_id"],
        )
        log.info("adapter imported", adapter=f"{record.name}@{version}", size_bytes=size)
        return record

    def _check_header(self, h: ImportHeader) -> None:
        v = Violations()
        try:
            check_name(h.name, "header.name")
        except InvalidRequest as exc:
            v.items += exc.violations
        if not 1 <= h.size_bytes <= self.max_bytes:
            v.add("header.size_bytes", f"must be in [1, {self.max_bytes}] (the server's max_adapter_bytes)")
        if len(h.sha256) != 64 or any(c not in "0123456789abcdef" for c in h.sha256):
            v.add("header.sha256", "must be the archive's SHA-256 in lower-case hex")
        if h.temperature < 0 or not math.isfinite(h.temperature):
            v.add("header.temperature", "must be a positive number (0: the archive's, else 1)")
        v.raise_if_any("the import was refused")

    async def _check_quota(self, namespace: str) -> None:
        usage = await asyncio.to_thread(self.store.namespace_usage, namespace)
        check(
            "adapter_versions",
            self.quotas.adapter_versions,
            usage["adapter_versions"] + usage["active_jobs"],
            1,
            namespace,
            "adapter versions (stored, plus one per queued or running job)",
        )

    async def _receive(self, header: ImportHeader, parts: AsyncIterator[ImportPart], path: Path) -> None:
        digest = hashlib.sha256()
        received = 0
        fh = await asyncio.to_thread(open, path, "xb")
        try:
            async for part in parts:
                if not isinstance(part, ArchiveChunk):
                    raise InvalidRequest.field("header", "only the first message may be a header")
                if part.offset != received:
                    raise InvalidRequest.field(
                        "chunk.offset", f"is {part.offset}; the next byte the server expects is {received}"
                    )
                received += len(part.data)
                if received > header.size_bytes:
                    raise InvalidRequest.field(
                        "chunk.data",
                        f"bytes up to offset {received} exceed header.size_bytes ({header.size_bytes})",
                    )
                digest.update(part.data)
                await asyncio.to_thread(fh.write, part.data)
        finally:
            fh.close()
        if received != header.size_bytes:
            raise InvalidRequest.field(
                "chunk.data",
                f"the stream ended after {received} of header.size_bytes ({header.size_bytes}) bytes",
            )
        if digest.hexdigest() != header.sha256:
            raise InvalidRequest.field("header.sha256", "does not match the bytes received")

    # ------------------------------------------------------------ the archive's contents
    def _check_files(
        self, directory: Path, names: list[str], header: ImportHeader
    ) -> tuple[AdapterMeta, dict[str, Any]]:
        """Check the unpacked files against the served model; write the version's
        tuneserve.json. InvalidRequest naming the file (or file.key) on any problem."""
        v = Violations()
        for name in names:
            if name.lower().endswith(PICKLE_SUFFIXES):
                v.add(
                    name, "is a pickle-format file, which is refused: only safetensors weights are accepted"
                )
            elif name not in ACCEPTED:
                v.add(name, f"is not a file an adapter archive holds (one of {', '.join(sorted(ACCEPTED))})")
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            if name not in names:
                v.add(name, "is missing")
        v.raise_if_any("the adapter archive was refused")
        (directory / MODEL_CARD).unlink(missing_ok=True)
        config = _json_file(directory, ADAPTER_CONFIG)
        given = _json_file(directory, ADAPTER_META) if ADAPTER_META in names else {}
        limits = self.engine.train_limits()
        task = self._task(given, limits.served_task, limits.base_model)

        base = config.get("base_model_name_or_path")
        if base != limits.base_model:
            v.add(
                f"{ADAPTER_CONFIG}.base_model_name_or_path",
                f"is {base!r}; this server serves {limits.base_model!r}, and an adapter serves only on the base it was trained on",
            )
        rank = config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= limits.max_lora_rank:
            v.add(
                f"{ADAPTER_CONFIG}.r",
                f"is {rank!r}; must be in [1, {limits.max_lora_rank}] (the server's max_lora_rank)",
            )
        targets = config.get("target_modules")
        if isinstance(targets, list):
            missing = sorted(str(t) for t in targets if t not in limits.linear_modules)
            if missing:
                v.add(
                    f"{ADAPTER_CONFIG}.target_modules",
                    f"names {', '.join(missing)}, which the base model has no Linear layer called",
                )
        unsupported = unsupported_features(config)
        if unsupported:
            v.add(ADAPTER_CONFIG, f"uses {', '.join(unsupported)}, which serving does not support")
        v.raise_if_any("the adapter archive was refused")

        lora_rank, modules = self._check_factors(directory, config, limits.max_lora_rank)
        labels: tuple[str, ...] = ()
        temperature = 1.0
        if task is TaskType.CLASSIFICATION:
            labels = self._labels(header, given)
            self._check_head(directory, names, len(labels))
            temperature = header.temperature or float(given.get("temperature", 1.0) or 1.0)
        else:
            for name, what in ((HEAD_FILE, "a head"), (UNCERTAINTY_FILE, "an uncertainty model")):
                if name in names:
                    v.add(name, f"a causal LM adapter has no {what}; leave the file out")
            if header.labels:
                v.add("header.labels", "a causal LM adapter has no labels")
            v.raise_if_any("the adapter archive was refused")
        metrics = {
            str(k): float(x)
            for k, x in (given.get("metrics") or {}).items()
            if isinstance(x, (int, float)) and not isinstance(x, bool)
        }
        meta = AdapterMeta(
            task=task,
            base_model=limits.base_model,
            labels=labels,
            lora_rank=lora_rank,
            target_modules=modules,
            metrics=metrics,
            job_id="",
            temperature=temperature,
        )
        lineage: dict[str, Any] = {
            "source": "imported",
            "import_id": uuid.uuid4().hex,
            "imported_at": datetime.now(UTC).isoformat(),
        }
        if given.get("lineage") or given.get("adapter"):  # an export of (another) tuneserve
            lineage["origin"] = {"lineage": given.get("lineage"), "adapter": given.get("adapter")}
        (directory / ADAPTER_META).write_text(
            json.dumps({**json.loads(meta.to_json()), "lineage": lineage}, indent=2)
        )
        return meta, lineage

    @staticmethod
    def _task(given: dict[str, Any], served: TaskType, base_model: str) -> TaskType:
        if "task" not in given:
            return served
        try:
            task = TaskType(given["task"])
        except ValueError:
            raise InvalidRequest.field(f"{ADAPTER_META}.task", f"{given['task']!r} is not a task") from None
        if task is not served:
            raise FailedPrecondition(
                f"this server serves {base_model}, a {served.value} model; the archive holds a {task.value} adapter"
            )
        return task

    def _check_factors(
        self, directory: Path, config: dict[str, Any], max_rank: int
    ) -> tuple[int, tuple[str, ...]]:
        """The LoRA factors as serving reads them (read_lora, with the base's layer shapes)."""
        shapes = self.engine.lora_layer_shapes()
        try:
            weights = read_lora(directory, dtype=torch.float32, module_paths=shapes, shapes=shapes)
        except FailedPrecondition as exc:
            raise InvalidRequest.field(ADAPTER_WEIGHTS, exc.message) from None
        except Exception as exc:  # not a safetensors file, or a damaged one: never INTERNAL
            raise InvalidRequest.field(
                ADAPTER_WEIGHTS, f"is not a readable safetensors file ({type(exc).__name__})"
            ) from None
        if not weights.factors:
            raise InvalidRequest.field(ADAPTER_WEIGHTS, "holds no LoRA factors")
        ranks = {a_t.shape[1] for a_t, _ in weights.factors.values()}
        if max(ranks) > max_rank:
            raise InvalidRequest.field(
                ADAPTER_WEIGHTS, f"has factors of rank {max(ranks)}; the server's max_lora_rank is {max_rank}"
            )
        if not config.get("rank_pattern") and ranks != {config["r"]}:
            raise InvalidRequest.field(
                f"{ADAPTER_CONFIG}.r",
                f"is {config['r']}, but the factors have rank {', '.join(map(str, sorted(ranks)))}",
            )
        modules = tuple(sorted({path.rsplit(".", 1)[-1] for path in weights.factors}))
        return max(ranks), modules

    @staticmethod
    def _labels(header: ImportHeader, given: dict[str, Any]) -> tuple[str, ...]:
        archived = tuple(given.get("labels") or ())
        if header.labels and archived and tuple(header.labels) != archived:
            raise InvalidRequest.field("header.labels", f"disagree with {ADAPTER_META}'s labels")
        labels = tuple(header.labels) or archived
        where = "header.labels" if header.labels else f"{ADAPTER_META}.labels"
        if len(labels) < 2:
            raise InvalidRequest.field(
                "header.labels" if not archived else where,
                "a classification adapter needs its labels (at least two), in the head's output order",
            )
        if not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
            raise InvalidRequest.field(where, "must be distinct, non-empty strings")
        return labels

    def _check_head(self, directory: Path, names: list[str], num_labels: int) -> None:
        if HEAD_FILE not in names:
            raise InvalidRequest.field(
                HEAD_FILE,
                "is missing: a classification adapter needs its linear head (tensors weight (labels, hidden) and bias (labels))",
            )
        try:
            tensors = load_file(str(directory / HEAD_FILE), device="cpu")
        except Exception as exc:
            raise InvalidRequest.field(
                HEAD_FILE, f"is not a readable safetensors file ({type(exc).__name__})"
            ) from None
        hidden = self.engine.hidden_size
        want = {"weight": (num_labels, hidden), "bias": (num_labels,)}
        if set(tensors) != set(want):
            raise InvalidRequest.field(
                HEAD_FILE, f"must hold exactly the tensors weight and bias, not {sorted(tensors)}"
            )
        for key, shape in want.items():
            if tuple(tensors[key].shape) != shape:
                raise InvalidRequest.field(
                    f"{HEAD_FILE}.{key}",
                    f"has shape {tuple(tensors[key].shape)}; {num_labels} labels on a {hidden}-wide base need {shape}",
                )


def _json_file(directory: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((directory / name).read_text())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest.field(name, "is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest.field(name, "must be a JSON object")
    return data


# ---------------------------------------------------------------- the model card
def model_card(meta: dict[str, Any], has_uncertainty: bool) -> str:
    adapter = meta.get("adapter", {})
    lineage = meta.get("lineage", {})
    task = meta["task"]
    base = meta["base_model"]
    title = f"{adapter.get('name', 'adapter')}@{adapter.get('version', '?')}"
    origin = (
        f"trained by tuneserve job `{lineage.get('job_id')}`"
        if lineage.get("source") == "trained"
        else f"imported into tuneserve ({lineage.get('imported_at', '')})"
    )
    lines = [
        f"# {title}",
        "",
        f"A LoRA adapter (peft) for `{base}`, task: {task}; {origin}, created "
        f"{adapter.get('created_at', '')}, exported {meta.get('exported_at', '')}. "
        f"Rank {meta.get('lora_rank')} on {', '.join(meta.get('target_modules', []))}.",
        "",
        "## Files",
        "",
        "* `adapter_config.json`, `adapter_model.safetensors`: the LoRA adapter, as "
        "`peft.PeftModel.from_pretrained(base, this_directory)` loads it.",
    ]
    if task == TaskType.CLASSIFICATION.value:
        lines.append(
            "* `head.safetensors`: the linear classification head, tensors `weight` (labels, hidden) "
            "and `bias` (labels), applied to the attention-masked mean of the base model's last hidden "
            f"states (inputs truncated to {MAX_SEQ_LENGTH} tokens); probabilities are "
            f"`softmax(logits / temperature)` with temperature {meta.get('temperature', 1.0):.6g}."
        )
    lines.append(
        "* `tuneserve.json`: labels, temperature, base model, metrics, lineage, data report summary."
    )
    if has_uncertainty:
        lines.append(
            "* `uncertainty.safetensors`: tuneserve's conformal calibration, abstention and "
            "out-of-domain model (read by tuneserve only)."
        )
    if meta.get("labels"):
        lines += ["", "## Labels (head output order)", ""]
        lines += [f"{i}. `{label}`" for i, label in enumerate(meta["labels"])]
    if meta.get("metrics"):
        lines += [
            "",
            "## Metrics (validation split of the training job)",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(meta["metrics"].items())]
    lines += ["", "## Load it with transformers + peft", "", "```python"]
    lines += _loader(task, base)
    lines += ["```", ""]
    return "\n".join(lines)


def _loader(task: str, base: str) -> list[str]:
    if task == TaskType.CLASSIFICATION.value:
        return [
            "import json, torch",
            "from peft import PeftModel",
            "from safetensors.torch import load_file",
            "from transformers import AutoModel, AutoTokenizer",
            "",
            'd = "path/to/this/directory"',
            'meta = json.load(open(f"{d}/tuneserve.json"))',
            f'tok = AutoTokenizer.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(AutoModel.from_pretrained("{base}"), d).eval()',
            'head = load_file(f"{d}/head.safetensors")',
            f'enc = tok(["my card has not arrived"], padding=True, truncation=True, max_length={MAX_SEQ_LENGTH}, return_tensors="pt")',
            "with torch.no_grad():",
            "    hidden = model(**enc).last_hidden_state",
            'mask = enc["attention_mask"].unsqueeze(-1).float()',
            "pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)",
            'probs = torch.softmax((pooled @ head["weight"].T + head["bias"]) / meta["temperature"], -1)',
            'print(meta["labels"][int(probs.argmax())], probs.max().item())',
        ]
    return [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'd = "path/to/this/directory"',
        f'tok = AutoTokenizer.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), d).eval()',
        'messages = [{"role": "user", "content": "Can I change my order?"}]',
        'ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")',
        "out = model.generate(ids, max_new_tokens=60, do_sample=False)",
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
    ]
