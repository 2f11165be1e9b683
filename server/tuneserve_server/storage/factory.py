"""Builds the configured stores: the one place that maps settings to implementations."""

from __future__ import annotations

from tuneserve_server.config import Settings
from tuneserve_server.storage.adapter_store import AdapterStore
from tuneserve_server.storage.job_store import JobStore
from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
from tuneserve_server.storage.sqlite_store import SqliteStore


def build_job_store(settings: Settings) -> JobStore:
    return SqliteStore(settings.job_db_path, max_attempts=settings.job_max_attempts)


def build_adapter_store(settings: Settings) -> AdapterStore:
    return LocalAdapterStore(settings.adapter_path)


def build_stores(settings: Settings) -> tuple[JobStore, AdapterStore]:
    return build_job_store(settings), build_adapter_store(settings)
