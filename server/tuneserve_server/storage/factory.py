"""Builds the configured stores: the one place that maps settings to implementations."""

from __future__ import annotations

from tuneserve_server.config import Settings
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore


def build_job_store(settings: Settings) -> JobStore:
    if settings.database_url:
        # Imported here: psycopg, alembic and SQLAlchemy load only when PostgreSQL is used.
        from tuneserve_server.storage.postgres_store import PostgresStore

        return PostgresStore(settings.database_url, max_attempts=settings.job_max_attempts)
    return SqliteStore(settings.job_db_path, max_attempts=settings.job_max_attempts)


def build_adapter_store(settings: Settings) -> AdapterStore:
    if settings.adapter_store_url:
        from tuneserve_server.storage.s3_adapter_store import S3AdapterStore

        # Endpoint, region and credentials: boto3 reads the standard AWS_* variables itself
        # (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Verified downloads are cached per node.
        return S3AdapterStore(settings.adapter_store_url, cache_dir=settings.data_dir / "adapter-cache")
    return LocalAdapterStore(settings.adapter_path)


def build_stores(settings: Settings) -> tuple[JobStore, AdapterStore]:
    return build_job_store(settings), build_adapter_store(settings)
