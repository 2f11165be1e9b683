"""What only the SQLite store has: one file shared by several store instances (the API and
worker processes), WAL mode, the file's directory made on first use. The JobStore behaviour
itself (both backends) is in test_job_store_contract."""

from __future__ import annotations

import sqlite3
import threading

from tuneserve_server.domain.jobs import JobProgress, JobState
from tuneserve_server.storage.sqlite_store import SqliteStore


def test_the_file_and_its_directory_are_made_and_use_wal(tmp_path):
    path = tmp_path / "a" / "b" / "jobs.db"
    store = SqliteStore(path)
    store.close()
    assert path.is_file()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_claims_from_two_stores_on_one_file_never_share_a_job(tmp_path, make_spec):
    db_path = tmp_path / "jobs.db"
    stores = [SqliteStore(db_path), SqliteStore(db_path)]
    try:
        created = {stores[0].create_job(make_spec(request_id=f"r{i}"))[0].id for i in range(20)}
        claims: list[tuple[str, str]] = []
        lock = threading.Lock()
        start = threading.Barrier(6)

        def worker(store: SqliteStore, worker_id: str) -> None:
            start.wait()
            while (claimed := store.claim_job(worker_id, 60)) is not None:
                job, spec = claimed
                assert job.state is JobState.RUNNING and spec.request_id == job.request_id
                with lock:
                    claims.append((job.id, worker_id))

        threads = [threading.Thread(target=worker, args=(stores[i % 2], f"w{i}")) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        claimed_ids = [job_id for job_id, _ in claims]
        assert len(claimed_ids) == 20
        assert set(claimed_ids) == created
        # Each job is RUNNING under exactly the worker that claimed it.
        for job_id, worker_id in claims:
            assert stores[1].heartbeat(job_id, worker_id, 60, JobProgress()) is False
    finally:
        for s in stores:
            s.close()
