"""What only the PostgreSQL store has: alembic migrations on start from several replicas at
once, NOTIFY on registry changes, the DSN setting. The JobStore behaviour itself (NUL
handling included: both databases answer it the same way) is in test_job_store_contract."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from tuneserve_server.domain.errors import AlreadyExists
from tuneserve_server.domain.records import AdapterVersionRecord

psycopg = pytest.importorskip("psycopg")

from tuneserve_server.storage.postgres_store import PostgresStore  # noqa: E402


@pytest.fixture
def store(postgres_dsn):
    s = PostgresStore(postgres_dsn)
    yield s
    s.close()


def _record(spec, version: int, job_id: str) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        namespace=spec.namespace,
        name=spec.adapter_name,
        version=version,
        job_id=job_id,
        task=spec.task,
        base_model="tiny-bert",
        labels=("neg", "pos"),
        metrics={},
        lora_rank=4,
        size_bytes=1,
        created_at=datetime.now(UTC),
    )


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tuneserve_server.storage.postgres_store import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_replicas_starting_together_migrate_once_and_all_come_up(postgres_dsn):
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def boot() -> None:
        start.wait()
        try:
            s = PostgresStore(postgres_dsn)
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            stores.append(s)

    threads = [threading.Thread(target=boot) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == [] and len(stores) == 4
        with psycopg.connect(postgres_dsn) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(_head(),)]
            assert conn.execute("SELECT id, seq FROM registry_clock").fetchall() == [(1, 0)]
        assert stores[0].reserve_adapter_version("a", "x") == 1
        # A restart on a migrated schema changes nothing.
        PostgresStore(postgres_dsn).close()
        assert stores[1].reserve_adapter_version("a", "x") == 2
    finally:
        for s in stores:
            s.close()


_BOOT = """
import sys
import alembic.command, sqlalchemy
from tuneserve_server.storage.postgres_store import PostgresStore
print("ready", flush=True)
sys.stdin.readline()  # all start migrating together
PostgresStore(sys.argv[1]).close()
print("up", flush=True)
"""


def test_replica_processes_starting_together_take_turns_migrating(postgres_dsn):
    """Separate processes: only the advisory lock in the migrations' env.py keeps them from
    creating the same tables at once."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BOOT, postgres_dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
        for p in procs:  # imports done everywhere: now all at once
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["up"] * 3
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(_head(),)]
        assert conn.execute("SELECT count(*) FROM registry_clock").fetchone() == (1,)


def test_migrations_live_in_the_package_with_one_head():
    from tuneserve_server.storage.postgres_store import MIGRATIONS_DIR

    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert _head() == "0004"


def test_registry_changes_notify_listeners_after_commit(store, make_spec):
    spec = make_spec()
    with store.registry_listener() as listener:
        job, _ = store.create_job(spec)
        store.claim_job("w", 60)
        assert listener.wait(0.05) == []  # claims are not registry changes
        version = store.reserve_adapter_version("default", "intents")
        t0 = time.perf_counter()
        store.complete_job(job.id, "w", {}, _record(spec, version, job.id))
        (seq,) = listener.wait(5)
        assert time.perf_counter() - t0 < 1.0
        # One notice per commit, with its last seq: the version, then `default` moving to it.
        versions, aliases = store.registry_changes(0)
        assert seq == aliases[-1].seq == versions[-1].seq + 1

        # A completion that rolls back (the version is taken) notifies no one.
        job2, _ = store.create_job(make_spec(request_id="r2"))
        store.claim_job("w", 60)
        with pytest.raises(AlreadyExists):
            store.complete_job(job2.id, "w", {}, _record(spec, version, job2.id))
        assert listener.wait(0.1) == []

        store.delete_adapter_versions("default", "intents")  # its alias, then its version
        assert listener.wait(5) == [seq + 2]

        # Another deployment in another schema of the same database: not ours.
        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('tuneserve_registry', 'someone_else:99')")
        assert listener.wait(0.2) == []


def test_unreachable_database_fails_at_start():
    with pytest.raises(psycopg.OperationalError):
        PostgresStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")


def test_factory_builds_a_postgres_store_from_database_url(postgres_dsn, tmp_path):
    from tuneserve_server.config import Settings
    from tuneserve_server.storage.factory import build_job_store
    from tuneserve_server.storage.sqlite_store import SqliteStore

    store = build_job_store(Settings(data_dir=tmp_path, database_url=postgres_dsn, job_max_attempts=5))
    try:
        assert isinstance(store, PostgresStore) and store.max_attempts == 5
    finally:
        store.close()
    assert not (tmp_path / "jobs.db").exists()  # no SQLite file beside a PostgreSQL store
    sqlite = build_job_store(Settings(data_dir=tmp_path))
    try:
        assert isinstance(sqlite, SqliteStore) and sqlite.path == tmp_path / "jobs.db"
    finally:
        sqlite.close()
