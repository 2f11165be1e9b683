"""Datasets in the SQL job store: resumable uploads (bytes kept per chunk so any replica can
take the next one), finished datasets stored whole, listing and deletion."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager

import sqlalchemy as sa

from tuneserve_server.domain.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound
from tuneserve_server.domain.records import DatasetRecord, UploadState
from tuneserve_server.storage import schema
from tuneserve_server.storage.rows import dataset_from_row
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
        if json.loads(row["header_json"]) != json.loads(header_json):
            raise AlreadyExists(
                f"upload_id {upload_id!r} is in use by an upload of a different file; use a new upload_id"
            )
        return UploadState(namespace, upload_id, header, int(row["received"]))

    def _expire_uploads(self, tx: Tx) -> None:
        """Forget uploads with no chunk for longer than upload_ttl_s, their bytes first."""
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
        tx.execute(sa.delete(UP).where(stale), **ttl)

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

    def upload_bytes(self, namespace: str, upload_id: str) -> bytes:
        with self._autocommit() as tx:
            chunks = tx.scalars(
                sa.select(CH.c.data)
                .where(CH.c.namespace == namespace, CH.c.upload_id == upload_id)
                .order_by(CH.c.start_byte)
            )
        return b"".join(bytes(c) for c in chunks)

    def discard_upload(self, namespace: str, upload_id: str) -> None:
        with self._write() as tx:
            self._drop_upload(tx, namespace, upload_id)

    @staticmethod
    def _drop_upload(tx: Tx, namespace: str, upload_id: str) -> None:
        for table in (CH, UP):
            tx.execute(sa.delete(table).where(table.c.namespace == namespace, table.c.upload_id == upload_id))

    def finish_upload(self, record: DatasetRecord, content: bytes) -> tuple[DatasetRecord, bool]:
        with self._write() as tx:
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
                    content=content,
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
            self._drop_upload(tx, record.namespace, record.upload_id)
        return dataset_from_row(row), created

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
        return bytes(self._dataset_row(namespace, dataset_id, DS.c.content)["content"])

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
            with self._autocommit() as tx:  # one statement: its own transaction
                gone = tx.execute(
                    sa.delete(DS).where(DS.c.id == dataset_id, DS.c.namespace == namespace)
                ).rowcount
        if not gone:
            raise self._dataset_not_found(namespace, dataset_id)
