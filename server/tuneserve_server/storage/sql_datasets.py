"""Datasets in the SQL job store: resumable uploads (bytes kept per chunk so any replica can
take the next one), finished datasets, listing and deletion.

A finished upload keeps its chunk rows: they become the dataset's bytes (the dataset row
names them by (namespace, upload_id), and its own `content` stays empty), so finishing
never copies the file and nothing joins it in memory except `dataset_content`, which the
trainer asks for. Rows stored whole in `content` (older datasets, or `finish_upload` given
the bytes) are read from there. Chunk rows of an upload that is still open are the staging
bytes: ListUploads shows them, DeleteUpload and the TTL sweep forget them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta

import sqlalchemy as sa

from tuneserve_server.domain.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.records import DatasetRecord, UploadState
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import _ts, dataset_from_row
from tuneserve_server.storage.sql import Dialect, Tx, has_nul, page_after, strip_nul, valid_page_size

DS = schema.datasets
UP = schema.dataset_uploads
CH = schema.dataset_upload_chunks


class DatasetsMixin:
    """The dataset half of SqlStore (it supplies the transactions and the dialect)."""

    _d: Dialect
    upload_ttl_s: float

    def _write(self) -> AbstractContextManager[Tx]: ...  # provided by SqlStore

    def _autocommit(self) -> AbstractContextManager[Tx]: ...

    def begin_upload(self, namespace: str, upload_id: str, header: dict) -> UploadState | DatasetRecord:
        """Start or resume an upload. A finished upload_id returns its dataset."""
        if has_nul(namespace, upload_id):
            raise InvalidRequest.field("header.upload_id", "must not contain NUL characters")
        header_json = strip_nul(json.dumps(header, sort_keys=True))
        with self._write() as tx:
            self._expire_uploads(tx)
            done = tx.row(
                sa.select(*schema.DATASET_COLUMNS).where(
                    DS.c.namespace == namespace, DS.c.upload_id == upload_id
                )
            )
            if done is not None:
                if (done["sha256"], done["size_bytes"]) != (header["sha256"], header["size_bytes"]):
                    raise AlreadyExists(
                        f"upload_id {upload_id!r} already uploaded a different file (dataset {done['id']})"
                    )
                return dataset_from_row(done)
            tx.execute(
                self._d.insert(UP)
                .values(
                    namespace=namespace, upload_id=upload_id, header_json=header_json, touched_at=self._d.now
                )
                .on_conflict_do_nothing()
            )
            row = tx.row(
                sa.select(UP.c.header_json, UP.c.received).where(
                    UP.c.namespace == namespace, UP.c.upload_id == upload_id
                )
            )
        if _identity(json.loads(row["header_json"])) != _identity(json.loads(header_json)):
            raise AlreadyExists(
                f"upload_id {upload_id!r} is in use by an upload of a different file; use a new upload_id"
            )
        return UploadState(namespace, upload_id, header, int(row["received"]))

    def _expire_uploads(self, tx: Tx) -> int:
        """Forget uploads with no chunk for longer than upload_ttl_s, their bytes first;
        returns how many."""
        stale = UP.c.touched_at < self._d.later("ttl_s")
        ttl = {"ttl_s": -self.upload_ttl_s}
        tx.execute(
            sa.delete(CH).where(
                sa.tuple_(CH.c.namespace, CH.c.upload_id).in_(
                    sa.select(UP.c.namespace, UP.c.upload_id).where(stale)
                )
            ),
            **ttl,
        )
        return int(tx.execute(sa.delete(UP).where(stale), **ttl).rowcount or 0)

    def sweep_uploads(self) -> int:
        """Forget every upload past its TTL (the API server runs this on a timer)."""
        with self._write() as tx:
            return self._expire_uploads(tx)

    def list_uploads(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[UploadState], str]:
        """The namespace's unfinished uploads, by upload_id; expired ones are left out."""
        size = valid_page_size(page_size)
        if has_nul(namespace, page_token):
            return [], ""
        query = sa.select(UP.c.upload_id, UP.c.header_json, UP.c.received, UP.c.touched_at).where(
            UP.c.namespace == namespace, UP.c.touched_at >= self._d.later("ttl_s")
        )
        if page_token:
            query = query.where(UP.c.upload_id > page_token)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(UP.c.upload_id).limit(size + 1), ttl_s=-self.upload_ttl_s)
        token = rows[size - 1]["upload_id"] if len(rows) > size else ""
        return [self._upload_state(namespace, r) for r in rows[:size]], token

    def _upload_state(self, namespace: str, row: dict) -> UploadState:
        header = json.loads(row["header_json"])
        touched = _ts(row["touched_at"])
        return UploadState(
            namespace,
            row["upload_id"],
            _identity(header),
            int(row["received"]),
            display_name=str(header.get("display_name", "")),
            touched_at=touched,
            expires_at=touched + timedelta(seconds=self.upload_ttl_s) if touched else None,
        )

    def add_upload_chunk(self, namespace: str, upload_id: str, offset: int, data: bytes) -> int:
        this_upload = sa.and_(UP.c.namespace == namespace, UP.c.upload_id == upload_id)
        with self._write() as tx:
            row = tx.row(sa.select(UP.c.received).where(this_upload).with_for_update())
            if row is None:
                raise NotFound(f"upload {upload_id!r} not found in namespace {namespace!r}")
            if offset != row["received"]:
                raise FailedPrecondition(
                    f"chunk at offset {offset} does not continue the upload, which has "
                    f"{row['received']} bytes; send from offset {row['received']}"
                )
            tx.execute(
                sa.insert(CH).values(namespace=namespace, upload_id=upload_id, start_byte=offset, data=data)
            )
            received = offset + len(data)
            tx.execute(sa.update(UP).where(this_upload).values(received=received, touched_at=self._d.now))
        return received

    def _open_upload(self, namespace: str, upload_id: str) -> sa.ColumnElement[bool]:
        """Chunk rows of an upload that is still open (not a finished dataset's)."""
        return sa.and_(
            CH.c.namespace == namespace,
            CH.c.upload_id == upload_id,
            sa.exists().where(UP.c.namespace == namespace, UP.c.upload_id == upload_id),
        )

    def iter_upload_chunks(self, namespace: str, upload_id: str, start: int = 0) -> Iterator[bytes]:
        """An open upload's bytes from offset `start`, one stored chunk per query: what
        reading it back costs is one chunk, whatever the file's size."""
        if has_nul(namespace, upload_id):
            return
        cursor = start
        first = True
        while True:
            with self._autocommit() as tx:
                where = self._open_upload(namespace, upload_id)
                if first:  # the chunk holding `start`, maybe beginning before it
                    query = (
                        sa.select(CH.c.start_byte, CH.c.data)
                        .where(where, CH.c.start_byte <= cursor)
                        .order_by(CH.c.start_byte.desc())
                    )
                else:
                    query = (
                        sa.select(CH.c.start_byte, CH.c.data)
                        .where(where, CH.c.start_byte >= cursor)
                        .order_by(CH.c.start_byte)
                    )
                row = tx.row(query.limit(1))
            if row is None:
                if first:
                    first = False
                    continue
                return
            first = False
            data = bytes(row["data"])
            begin = int(row["start_byte"])
            if begin + len(data) <= cursor:
                continue  # the chunk before `start` ends before it
            yield data[cursor - begin :] if begin < cursor else data
            cursor = begin + len(data)

    def upload_bytes(self, namespace: str, upload_id: str) -> bytes:
        """An open upload's bytes joined (tests and small files; finishing streams them)."""
        return b"".join(self.iter_upload_chunks(namespace, upload_id))

    def discard_upload(self, namespace: str, upload_id: str) -> bool:
        """Forget an unfinished upload and its bytes; False when there was none (a
        finished upload's dataset is never touched)."""
        if has_nul(namespace, upload_id):
            return False
        with self._write() as tx:
            return self._drop_upload(tx, namespace, upload_id)

    def _drop_upload(self, tx: Tx, namespace: str, upload_id: str) -> bool:
        tx.execute(sa.delete(CH).where(self._open_upload(namespace, upload_id)))
        gone = tx.execute(sa.delete(UP).where(UP.c.namespace == namespace, UP.c.upload_id == upload_id))
        return bool(gone.rowcount)

    def finish_upload(
        self, record: DatasetRecord, content: bytes | None = None
    ) -> tuple[DatasetRecord, bool]:
        """Store the dataset and close its upload, in one transaction; (dataset, created).
        Without `content` the upload's chunk rows become the dataset's bytes (no copy);
        with it, the bytes are stored in the row and the chunks dropped."""
        with self._write() as tx:
            if content is None:
                self._check_complete(tx, record)
            row = tx.row(
                self._d.insert(DS)
                .values(
                    id=record.id,
                    namespace=record.namespace,
                    upload_id=record.upload_id,
                    display_name=strip_nul(record.display_name),
                    task=record.task.value,
                    format=record.format,
                    size_bytes=record.size_bytes,
                    sha256=record.sha256,
                    rows=record.rows,
                    usable_rows=record.usable_rows,
                    report_json=strip_nul(json.dumps(record.report)),
                    text_field=record.text_field,
                    label_field=record.label_field,
                    created_at=self._d.now,
                    content=b"" if content is None else content,
                )
                .on_conflict_do_nothing(index_elements=[DS.c.namespace, DS.c.upload_id])
                .returning(*schema.DATASET_COLUMNS)
            )
            created = row is not None
            if not created:
                row = tx.row(
                    sa.select(*schema.DATASET_COLUMNS).where(
                        DS.c.namespace == record.namespace, DS.c.upload_id == record.upload_id
                    )
                )
            if created and content is None:  # the chunks stay: they are the dataset now
                tx.execute(
                    sa.delete(UP).where(
                        UP.c.namespace == record.namespace, UP.c.upload_id == record.upload_id
                    )
                )
            else:
                self._drop_upload(tx, record.namespace, record.upload_id)
        return dataset_from_row(row), created

    @staticmethod
    def _check_complete(tx: Tx, record: DatasetRecord) -> None:
        """The chunks about to become the dataset are all there: the upload was not
        discarded or swept while it was being checked (a finished one is answered as is)."""
        up = tx.row(
            sa.select(UP.c.received)
            .where(UP.c.namespace == record.namespace, UP.c.upload_id == record.upload_id)
            .with_for_update()
        )
        if up is not None and int(up["received"]) == record.size_bytes:
            return
        done = tx.row(
            sa.select(DS.c.id).where(DS.c.namespace == record.namespace, DS.c.upload_id == record.upload_id)
        )
        if done is None:
            raise FailedPrecondition(
                f"upload {record.upload_id!r} was discarded while it was being finished; send it again"
            )

    @staticmethod
    def _dataset_not_found(namespace: str, dataset_id: str) -> NotFound:
        return NotFound(f"dataset {dataset_id!r} not found in namespace {namespace!r}")

    def _dataset_row(self, namespace: str, dataset_id: str, *columns: sa.Column) -> sa.RowMapping:
        row = None
        if not has_nul(namespace, dataset_id):
            with self._autocommit() as tx:
                row = tx.row(sa.select(*columns).where(DS.c.id == dataset_id, DS.c.namespace == namespace))
        if row is None:
            raise self._dataset_not_found(namespace, dataset_id)
        return row

    def get_dataset(self, namespace: str, dataset_id: str) -> DatasetRecord:
        return dataset_from_row(self._dataset_row(namespace, dataset_id, *schema.DATASET_COLUMNS))

    def dataset_content(self, namespace: str, dataset_id: str) -> bytes:
        """The dataset's bytes (the trainer holds one dataset in memory while it trains)."""
        row = self._dataset_row(namespace, dataset_id, DS.c.content, DS.c.upload_id, DS.c.size_bytes)
        if row["content"] or not row["size_bytes"]:
            return bytes(row["content"])
        with self._autocommit() as tx:
            chunks = tx.scalars(
                sa.select(CH.c.data)
                .where(CH.c.namespace == namespace, CH.c.upload_id == row["upload_id"])
                .order_by(CH.c.start_byte)
            )
        return b"".join(bytes(c) for c in chunks)

    def list_datasets(
        self, namespace: str, *, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[DatasetRecord], str]:
        size = valid_page_size(page_size)
        after = page_after(page_token)
        if has_nul(namespace):
            return [], ""
        query = sa.select(*schema.DATASET_COLUMNS).where(DS.c.namespace == namespace)
        if after is not None:
            query = query.where(DS.c.seq < after)
        with self._autocommit() as tx:
            rows = tx.rows(query.order_by(DS.c.seq.desc()).limit(size + 1))
        token = str(rows[size - 1]["seq"]) if len(rows) > size else ""
        return [dataset_from_row(r) for r in rows[:size]], token

    def delete_dataset(self, namespace: str, dataset_id: str) -> None:
        gone = 0
        if not has_nul(namespace, dataset_id):
            this = sa.and_(DS.c.id == dataset_id, DS.c.namespace == namespace)
            with self._write() as tx:  # the dataset's chunk rows, then the dataset
                tx.execute(
                    sa.delete(CH).where(
                        CH.c.namespace == namespace,
                        CH.c.upload_id.in_(sa.select(DS.c.upload_id).where(this)),
                    )
                )
                gone = tx.execute(sa.delete(DS).where(this)).rowcount
        if not gone:
            raise self._dataset_not_found(namespace, dataset_id)


def _identity(header: dict) -> dict:
    """What must match when an upload resumes: the header less its display name."""
    return {k: v for k, v in header.items() if k != "display_name"}
