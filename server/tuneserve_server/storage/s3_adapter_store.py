"""AdapterStore on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...), via boto3.

Layout: s3://<bucket>/<prefix>/<namespace>/<name>/<version>/<file>, one object per file of
the version plus MANIFEST.json (storage/manifest.py).

Atomic publish without rename: every file is uploaded first and the manifest LAST, so a
version exists exactly when its manifest object does. A reader that finds no manifest sees
no version (NotFound), however many of its files are already there; delete removes the
manifest first for the same reason. Manifest and files are each written once: a version is
never overwritten (FileExistsError, checked before any upload and again, where the server
supports conditional writes, by putting the manifest with If-None-Match).

open() reads the manifest, downloads the files into a temporary directory under
`cache_dir`, checks every checksum and renames the directory into
cache_dir/<namespace>/<name>/<version>; later opens on this node reuse that copy once it
verifies against the current manifest again (one small GET per open, no download).

Endpoint, region and credentials come from boto3's own configuration: the standard AWS_*
environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION, ...), a shared config file, or an instance / pod role."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import structlog

from tuneserve_server.domain.errors import CorruptAdapter, FailedPrecondition, NotFound
from tuneserve_server.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    parse_manifest,
    payload_size,
    verify_directory,
    write_manifest,
)

log = structlog.get_logger("tuneserve.adapter_store")

_MISSING = ("404", "NoSuchKey", "NotFound")


def parse_s3_url(url: str) -> tuple[str, str]:
    """('bucket', 'prefix') from s3://bucket[/prefix]; the prefix has no leading or trailing /."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket")
    return bucket, prefix.strip("/")


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3AdapterStore:
    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | Path,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if client is None:
            try:
                import boto3  # optional dependency: only an s3:// adapter store needs it
            except ImportError as exc:
                raise FailedPrecondition(
                    "an s3:// adapter store needs boto3: pip install 'tuneserve[s3]'"
                ) from exc
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client
        from botocore.exceptions import ClientError

        self._client_error = ClientError
        self.cache_dir = Path(cache_dir)
        self._staging = self.cache_dir / ".staging"
        self._tmp = self.cache_dir / ".tmp"
        self._staging.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ names
    def _key(self, namespace: str, name: str, version: int, rel: str = "") -> str:
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, namespace, name, str(version), rel])

    def _cache_path(self, namespace: str, name: str, version: int) -> Path:
        return self.cache_dir / namespace / name / str(version)

    # ------------------------------------------------------------------ object helpers
    def _get_manifest(self, namespace: str, name: str, version: int) -> bytes | None:
        try:
            obj = self.client.get_object(
                Bucket=self.bucket, Key=self._key(namespace, name, version, MANIFEST_NAME)
            )
        except self._client_error as exc:
            if _error_code(exc) in _MISSING:
                return None
            raise
        return obj["Body"].read()

    def _manifest_exists(self, namespace: str, name: str, version: int) -> bool:
        try:
            self.client.head_object(
                Bucket=self.bucket, Key=self._key(namespace, name, version, MANIFEST_NAME)
            )
        except self._client_error as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise
        return True

    def _put_manifest(self, key: str, raw: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=raw, IfNoneMatch="*")
        except self._client_error as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise FileExistsError(f"adapter version s3://{self.bucket}/{key} already published") from exc
            if code not in ("NotImplemented", "501"):
                raise
            # A server without conditional writes: the check before the upload stands alone
            # (version numbers are handed out once by the job store, so it is only a guard).
            self.client.put_object(Bucket=self.bucket, Key=key, Body=raw)

    # ------------------------------------------------------------------ the protocol
    def staging_dir(self) -> Path:
        path = self._staging / uuid.uuid4().hex
        path.mkdir()
        return path

    def publish(self, staged_dir: Path, namespace: str, name: str, version: int) -> int:
        manifest_key = self._key(namespace, name, version, MANIFEST_NAME)
        # Checked before any upload: files of a published version are never overwritten.
        if self._manifest_exists(namespace, name, version):
            raise FileExistsError(f"adapter version s3://{self.bucket}/{manifest_key} already published")
        files, raw = write_manifest(staged_dir)
        for rel in files:
            self.client.upload_file(
                str(staged_dir / rel), self.bucket, self._key(namespace, name, version, rel)
            )
        self._put_manifest(manifest_key, raw)  # last: from now on the version exists
        shutil.rmtree(staged_dir, ignore_errors=True)
        return payload_size(files)

    def open(self, namespace: str, name: str, version: int) -> Path:
        what = f"{namespace}/{name}@{version}"
        raw = self._get_manifest(namespace, name, version)
        cached = self._cache_path(namespace, name, version)
        if raw is None:
            self._discard(cached)  # deleted (or never published): drop this node's copy
            raise NotFound(f"adapter files for {what} are missing")
        files = parse_manifest(raw, what)
        if cached.is_dir():
            try:
                if (cached / MANIFEST_NAME).read_bytes() == raw:
                    verify_directory(cached, what)
                    return cached
            except (OSError, CorruptAdapter):
                log.warning("cached adapter copy is damaged; downloading it again", adapter=what)
            self._discard(cached)
        return self._download(namespace, name, version, raw, files, cached)

    def delete(self, namespace: str, name: str, version: int) -> None:
        # The manifest first: from that moment the version is gone for every reader.
        self.client.delete_object(Bucket=self.bucket, Key=self._key(namespace, name, version, MANIFEST_NAME))
        prefix = self._key(namespace, name, version)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        self._discard(self._cache_path(namespace, name, version))

    # ------------------------------------------------------------------ local cache
    def _download(
        self, namespace: str, name: str, version: int, raw: bytes, files: Manifest, final: Path
    ) -> Path:
        what = f"{namespace}/{name}@{version}"
        tmp = self._tmp / uuid.uuid4().hex
        tmp.mkdir()
        try:
            for rel in files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    key = self._key(namespace, name, version, rel)
                    self.client.download_file(self.bucket, key, str(target))
                except self._client_error as exc:
                    if _error_code(exc) in _MISSING:
                        # The manifest may have been deleted meanwhile: then the version is gone.
                        if self._get_manifest(namespace, name, version) is None:
                            raise NotFound(f"adapter files for {what} are missing") from None
                        raise CorruptAdapter(f"adapter {what} is corrupt: file {rel} is missing") from None
                    raise
            (tmp / MANIFEST_NAME).write_bytes(raw)
            verify_directory(tmp, what)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process on this node got there first; use its copy if it is sound.
                if (final / MANIFEST_NAME).is_file() and (final / MANIFEST_NAME).read_bytes() == raw:
                    verify_directory(final, what)
                    return final
                raise
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, path: Path) -> None:
        if path.is_dir():
            doomed = self._tmp / f"deleted-{uuid.uuid4().hex}"
            try:
                os.rename(path, doomed)  # one step, so no reader meets a half-removed copy
            except OSError:
                return
            shutil.rmtree(doomed, ignore_errors=True)
