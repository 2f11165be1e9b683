"""Dataset intake: the upload header's checks, an upload session that appends verified
chunks to the store, reading a stored dataset back as parsed rows, and DatasetService, the
flow behind the DatasetService RPCs (except ValidateDataset: TrainingService.validate).
No gRPC here.

An upload is resumable: the store keeps the bytes received so far under (namespace,
upload_id). A client that lost its connection sends the same header and the file again
from any offset at or below what the server holds; chunks the server already has are
compared byte for byte and skipped, the rest appended. The file is checked (size, SHA-256,
every row parsed) only once it is complete; a file that fails is discarded so the next try
starts clean."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import structlog

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest, NotFound, Violations
from tuneserve_server.domain.jobs import OptimizerSettings, TaskType
from tuneserve_server.domain.naming import namespace_of
from tuneserve_server.domain.records import DatasetRecord, UploadState
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.services.quotas import check_upload, quotas_of
from tuneserve_server.services.readiness import require_ready
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.data_report import build_report
from tuneserve_server.training.datafile import ParsedRows, parse_dataset

log = structlog.get_logger("tuneserve.services")

FORMATS = ("jsonl", "csv")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class UploadHeader:
    namespace: str
    display_name: str
    task: TaskType | None
    format: str  # "jsonl" | "csv" | "" (unknown)
    size_bytes: int
    sha256: str
    upload_id: str
    text_field: str = ""
    label_field: str = ""

    def identity(self) -> dict[str, object]:
        """What must match when an upload is resumed: the same file, read the same way."""
        return {
            "task": self.task.value if self.task else "",
            "format": self.format,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "text_field": self.text_field,
            "label_field": self.label_field,
        }


@dataclass(frozen=True)
class UploadChunk:
    offset: int
    data: bytes


def check_header(h: UploadHeader, *, max_bytes: int, served_task: TaskType) -> None:
    v = Violations()
    if not _UPLOAD_ID.fullmatch(h.upload_id):
        v.add("header.upload_id", "is required: 1-128 of A-Z a-z 0-9 . _ : -, e.g. a UUID")
    if h.task is None:
        v.add("header.task", "is required (TASK_TYPE_CLASSIFICATION or TASK_TYPE_CAUSAL_LM)")
    if h.format not in FORMATS:
        v.add("header.format", "must be DATASET_FORMAT_JSONL or DATASET_FORMAT_CSV")
    if not 1 <= h.size_bytes <= max_bytes:
        v.add("header.size_bytes", f"must be in [1, {max_bytes}] (the server's max_dataset_bytes)")
    if not _SHA256.fullmatch(h.sha256):
        v.add("header.sha256", "must be the file's SHA-256 as 64 lower-case hex digits")
    if len(h.display_name) > 200:
        v.add("header.display_name", "longer than 200 characters")
    for name in ("text_field", "label_field"):
        if len(getattr(h, name)) > 100:
            v.add(f"header.{name}", "longer than 100 characters")
    v.raise_if_any("invalid upload header")
    if h.task is not served_task:
        raise FailedPrecondition(
            f"this server trains {served_task.value} models; it cannot use a "
            f"{h.task.value if h.task else 'unknown'} dataset"
        )


class UploadSession:
    """One UploadDataset call: begin, add chunks in order, finish. Blocking (store calls):
    the servicer runs each step in a thread."""

    def __init__(self, store: JobStore, header: UploadHeader) -> None:
        self.store = store
        self.header = header
        self.namespace = header.namespace
        self.done: DatasetRecord | None = None
        self.received = 0
        self._stored: bytes | None = None  # the bytes held before this call, read on demand

    def begin(self) -> DatasetRecord | None:
        """Start or resume; returns the dataset when this upload_id already finished."""
        state = self.store.begin_upload(self.namespace, self.header.upload_id, self.header.identity())
        if isinstance(state, UploadState):
            self.received = state.received
            return None
        self.done = state
        return state

    def add(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > self.header.size_bytes:
            raise InvalidRequest.field(
                "chunk.data", f"bytes up to offset {end} exceed header.size_bytes ({self.header.size_bytes})"
            )
        if offset > self.received:
            raise FailedPrecondition(
                f"chunk at offset {offset} leaves a gap: the server holds {self.received} bytes "
                f"of upload {self.header.upload_id!r}; send from offset {self.received}"
            )
        overlap = min(end, self.received) - offset
        if overlap > 0:  # a re-sent chunk: it must match what is already stored
            if self._stored is None:
                self._stored = self.store.upload_bytes(self.namespace, self.header.upload_id)
            if self._stored[offset : offset + overlap] != data[:overlap]:
                raise FailedPrecondition(
                    f"re-sent bytes at offset {offset} differ from the ones already uploaded; "
                    "start over with a new upload_id"
                )
        if end > self.received:
            fresh = data[max(overlap, 0) :]
            self.received = self.store.add_upload_chunk(
                self.namespace, self.header.upload_id, self.received, fresh
            )

    def finish(
        self,
        *,
        max_text_chars: int,
        count_tokens: Callable[[list[str]], list[int]] | None,
        max_seq_length: int,
    ) -> tuple[DatasetRecord, bool]:
        if self.done is not None:
            return self.done, False
        h = self.header
        if self.received < h.size_bytes:
            raise FailedPrecondition(
                f"upload {h.upload_id!r} is incomplete: {self.received} of {h.size_bytes} bytes; "
                f"send the rest from offset {self.received} with the same upload_id"
            )
        content = self.store.upload_bytes(self.namespace, h.upload_id)
        digest = hashlib.sha256(content).hexdigest()
        if digest != h.sha256:
            self.store.discard_upload(self.namespace, h.upload_id)
            raise InvalidRequest.field(
                "header.sha256",
                f"the uploaded bytes hash to {digest}, not {h.sha256}; the upload was discarded, send it again",
            )
        assert h.task is not None
        try:
            parsed = parse_dataset(
                content,
                h.format,
                h.task,
                text_field=h.text_field,
                label_field=h.label_field,
                max_text_chars=max_text_chars,
                field="header",
            )
        except InvalidRequest:
            self.store.discard_upload(self.namespace, h.upload_id)
            raise
        report = build_report(
            h.task,
            parsed.examples,
            [],
            total_rows=parsed.total_rows,
            dropped=parsed.dropped,
            token_lengths=count_tokens,
            max_seq_length=max_seq_length,
        )
        if not parsed.examples:
            self.store.discard_upload(self.namespace, h.upload_id)
            raise InvalidRequest.field("chunk.data", f"the file has no usable rows: {report.error_summary()}")
        record = DatasetRecord(
            id="ds-" + uuid.uuid4().hex[:20],
            namespace=self.namespace,
            display_name=h.display_name,
            task=h.task,
            format=h.format,
            size_bytes=h.size_bytes,
            sha256=h.sha256,
            rows=parsed.total_rows,
            usable_rows=parsed.usable_rows,
            report=report.to_dict(),
            text_field=h.text_field,
            label_field=h.label_field,
            upload_id=h.upload_id,
        )
        return self.store.finish_upload(record, content)


def load_rows(
    store: JobStore,
    namespace: str,
    dataset_id: str,
    *,
    task: TaskType | None,
    max_text_chars: int,
    field: str,
) -> ParsedRows:
    """A stored dataset's rows, for Train and ValidateDataset. NOT_FOUND names the field."""
    try:
        record = store.get_dataset(namespace, dataset_id)
        content = store.dataset_content(namespace, dataset_id)
    except NotFound as exc:
        raise NotFound(f"{field}: {exc.message}") from None
    if task is not None and record.task is not task:
        raise InvalidRequest.field(
            field, f"dataset {dataset_id} holds {record.task.value} examples, not {task.value}"
        )
    return parse_dataset(
        content,
        record.format,
        record.task,
        text_field=record.text_field,
        label_field=record.label_field,
        max_text_chars=max_text_chars,
        field=field,
    )


UploadPart = UploadHeader | UploadChunk | None  # None: a message that is neither


class DatasetService:
    """Upload, get, list and delete stored datasets of one namespace."""

    def __init__(
        self, store: JobStore, engine: InferenceEngine, *, max_dataset_bytes: int, max_text_chars: int
    ) -> None:
        self.store = store
        self.engine = engine
        self.max_dataset_bytes = max_dataset_bytes
        self.max_text_chars = max_text_chars
        self.quotas = quotas_of(engine.settings)  # tenant quotas: see _quota_* below

    async def upload(self, parts: AsyncIterator[UploadPart]) -> tuple[DatasetRecord, bool]:
        """One UploadDataset stream: a header, then chunks. Returns (dataset, created); an
        upload_id that already finished answers at once, without reading the chunks."""
        require_ready(self.engine)
        first = await anext(aiter(parts), None)
        if not isinstance(first, UploadHeader):
            raise InvalidRequest.field("header", "the first message of an upload must be the header")
        header = replace(first, namespace=namespace_of(first.namespace, "header.namespace"))
        check_header(header, max_bytes=self.max_dataset_bytes, served_task=self.engine.task)
        structlog.contextvars.bind_contextvars(upload_id=header.upload_id)
        session = UploadSession(self.store, header)
        done = await asyncio.to_thread(session.begin)
        if done is not None:  # this upload_id already finished: answer without reading on
            return done, False
        await self._quota_at_start(session)
        async for part in parts:
            if not isinstance(part, UploadChunk):
                raise InvalidRequest.field("header", "only the first message may be a header")
            await self._quota_for_chunk(session, part)
            await asyncio.to_thread(session.add, part.offset, part.data)
        limits = self.engine.train_limits()
        dataset, created = await asyncio.to_thread(
            functools.partial(
                session.finish,
                max_text_chars=self.max_text_chars,
                count_tokens=limits.count_tokens,
                max_seq_length=OptimizerSettings().max_seq_length,
            )
        )
        if created:
            log.info(
                "dataset stored",
                dataset_id=dataset.id,
                rows=dataset.rows,
                usable_rows=dataset.usable_rows,
                size_bytes=dataset.size_bytes,
            )
        return dataset, created

    async def get(self, namespace: str, dataset_id: str) -> DatasetRecord:
        return await asyncio.to_thread(self.store.get_dataset, namespace, dataset_id)

    async def list(
        self, namespace: str, *, page_size: int, page_token: str
    ) -> tuple[list[DatasetRecord], str]:
        return await asyncio.to_thread(
            functools.partial(self.store.list_datasets, namespace, page_size=page_size, page_token=page_token)
        )

    async def delete(self, namespace: str, dataset_id: str) -> None:
        await asyncio.to_thread(self.store.delete_dataset, namespace, dataset_id)

    # ------------------------------------------------------------------ tenant quotas
    # (services/quotas.py) Checked at an upload's start, with the declared size, and before
    # every chunk with the bytes it adds; both read the namespace's usage from the store.

    async def _quota_at_start(self, session: UploadSession) -> None:
        h = session.header
        usage = await asyncio.to_thread(self.store.namespace_usage, h.namespace)
        try:
            # Its own bytes so far are in upload_bytes already: count only what is still to come.
            check_upload(
                self.quotas, usage, h.namespace, declared=h.size_bytes, adding=h.size_bytes - session.received
            )
        except Exception:
            if session.received == 0:  # refused before any byte: leave no empty upload behind
                await asyncio.to_thread(self.store.discard_upload, h.namespace, h.upload_id)
            raise

    async def _quota_for_chunk(self, session: UploadSession, chunk: UploadChunk) -> None:
        fresh = chunk.offset + len(chunk.data) - session.received
        if fresh <= 0:  # a re-sent chunk adds nothing
            return
        h = session.header
        usage = await asyncio.to_thread(self.store.namespace_usage, h.namespace)
        check_upload(self.quotas, usage, h.namespace, declared=h.size_bytes, adding=fresh)
