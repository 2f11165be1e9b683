"""Dataset intake: the upload header's checks, an upload session that appends verified
chunks to the store, reading a stored dataset back as parsed rows, and DatasetService, the
flow behind the DatasetService RPCs (except ValidateDataset: TrainingService.validate).
No gRPC here.

An upload is resumable: the store keeps the bytes received so far under (namespace,
upload_id). A client that lost its connection sends the same header and the file again
from any offset at or below what the server holds; chunks the server already has are
compared byte for byte and skipped, the rest appended. The file is checked (size, SHA-256,
every row parsed) only once it is complete; a file that fails is discarded so the next try
starts clean. Finishing reads the stored chunks back one at a time: the hash, the parse and
the report are all streamed, and the chunks become the dataset, so an upload at the size
cap costs the API process a chunk and a few numbers per row, never the file."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace

import structlog

from tuneserve_server.domain.errors import FailedPrecondition, InvalidRequest, NotFound, Violations
from tuneserve_server.domain.jobs import Example, LabelledText, OptimizerSettings, TaskType
from tuneserve_server.domain.naming import namespace_of
from tuneserve_server.domain.records import DatasetRecord, UploadState
from tuneserve_server.domain.tenancy import Quotas
from tuneserve_server.engine.inference import InferenceEngine
from tuneserve_server.observability.audit import audit
from tuneserve_server.services.quotas import check_upload
from tuneserve_server.services.readiness import require_ready
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.training.data_report import StreamingReport
from tuneserve_server.training.datafile import ParsedRows, parse_dataset, scan_dataset

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
        v.add(
            "header.task",
            "is required (TASK_TYPE_CLASSIFICATION, TASK_TYPE_CAUSAL_LM or TASK_TYPE_PREFERENCE)",
        )
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
    if h.task is TaskType.PREFERENCE and h.label_field:
        v.add("header.label_field", "preference data has chosen and rejected fields; leave label_field empty")
    v.raise_if_any("invalid upload header")
    if h.task is None or h.task.family is not served_task:
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

    def begin(self) -> DatasetRecord | None:
        """Start or resume; returns the dataset when this upload_id already finished."""
        state = self.store.begin_upload(
            self.namespace,
            self.header.upload_id,
            {**self.header.identity(), "display_name": self.header.display_name},
        )
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
        # A re-sent chunk: it must match what is already stored.
        if overlap > 0 and self._stored_bytes(offset, overlap) != data[:overlap]:
            raise FailedPrecondition(
                f"re-sent bytes at offset {offset} differ from the ones already uploaded; "
                "start over with a new upload_id"
            )
        if end > self.received:
            fresh = data[max(overlap, 0) :]
            self.received = self.store.add_upload_chunk(
                self.namespace, self.header.upload_id, self.received, fresh
            )

    def _stored_bytes(self, offset: int, length: int) -> bytes:
        """`length` stored bytes from `offset`, read a chunk at a time."""
        out = bytearray()
        for chunk in self.store.iter_upload_chunks(self.namespace, self.header.upload_id, offset):
            out += chunk[: length - len(out)]
            if len(out) >= length:
                break
        return bytes(out)

    def _chunks(self) -> Iterator[bytes]:
        return self.store.iter_upload_chunks(self.namespace, self.header.upload_id)

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
        digest = hashlib.sha256()
        for chunk in self._chunks():
            digest.update(chunk)
        if digest.hexdigest() != h.sha256:
            self.store.discard_upload(self.namespace, h.upload_id)
            raise InvalidRequest.field(
                "header.sha256",
                f"the uploaded bytes hash to {digest.hexdigest()}, not {h.sha256}; the upload was "
                "discarded, send it again",
            )
        assert h.task is not None
        read = functools.partial(
            scan_dataset,
            fmt=h.format,
            task=h.task,
            text_field=h.text_field,
            label_field=h.label_field,
            max_text_chars=max_text_chars,
            field="header",
        )
        stream = StreamingReport(h.task, token_lengths=count_tokens, max_seq_length=max_seq_length)
        try:
            total_rows = read(self._chunks(), sink=stream)
        except InvalidRequest:
            self.store.discard_upload(self.namespace, h.upload_id)
            raise
        report = stream.finish(total_rows, lambda row: _text_of_row(read, self._chunks(), row))
        if not report.usable_rows:
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
            rows=total_rows,
            usable_rows=report.usable_rows,
            report=report.to_dict(),
            text_field=h.text_field,
            label_field=h.label_field,
            upload_id=h.upload_id,
        )
        return self.store.finish_upload(record)


class _Found(Exception):
    def __init__(self, text: str) -> None:
        self.text = text


class _RowText:
    """A row sink that stops the scan at one row and keeps its text."""

    def __init__(self, row: int) -> None:
        self.row = row

    def example(self, row: int, example: Example) -> None:
        if row == self.row:
            raise _Found(example.text if isinstance(example, LabelledText) else "")

    def drop(self, row: int, reason: str) -> None:
        pass


def _text_of_row(read: Callable[..., int], chunks: Iterator[bytes], row: int) -> str:
    """One row's text, by reading the file again up to it (the report quotes one row)."""
    try:
        read(chunks, sink=_RowText(row))
    except _Found as found:
        return found.text
    return ""


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
        self,
        store: JobStore,
        engine: InferenceEngine,
        *,
        max_dataset_bytes: int,
        max_text_chars: int,
        quotas: Quotas,
    ) -> None:
        self.store = store
        self.engine = engine
        self.max_dataset_bytes = max_dataset_bytes
        self.max_text_chars = max_text_chars
        self.quotas = quotas  # tenant quotas: see _quota_* below

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
        audit("dataset.delete", namespace=namespace, dataset_id=dataset_id)

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

    async def list_uploads(
        self, namespace: str, *, page_size: int, page_token: str
    ) -> tuple[list[UploadState], str]:
        """The namespace's unfinished uploads (an owner sees only its own namespace)."""
        return await asyncio.to_thread(
            functools.partial(self.store.list_uploads, namespace, page_size=page_size, page_token=page_token)
        )

    async def discard_upload(self, namespace: str, upload_id: str) -> None:
        if not await asyncio.to_thread(self.store.discard_upload, namespace, upload_id):
            raise NotFound(f"upload {upload_id!r} not found in namespace {namespace!r}")
        log.info("upload discarded", upload_id=upload_id)

    async def sweep_uploads(self) -> int:
        """Forget uploads idle past the TTL (the API server's timer; starts sweep too)."""
        swept = await asyncio.to_thread(self.store.sweep_uploads)
        if swept:
            log.info("uploads swept", count=swept)
        return swept
