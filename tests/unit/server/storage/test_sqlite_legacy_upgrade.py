"""A SQLite file made before the migrations owned the schema (the old store's SCHEMA script,
kept in legacy_sqlite_schema.sql) opens with today's store: it is adopted at its revision,
upgraded in place, and every row it held reads back; new writes work beside them."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tuneserve_server.domain.errors import FailedPrecondition
from tuneserve_server.domain.jobs import EventType, JobState
from tuneserve_server.storage.sql import head_revision
from tuneserve_server.storage.sqlite_store import SqliteStore

LEGACY_SCHEMA = (Path(__file__).with_name("legacy_sqlite_schema.sql")).read_text()
# The first release's file: no event/dataset tables, no JSON side columns on jobs.
FIRST_RELEASE_DROPS = (
    "job_events",
    "datasets",
    "dataset_uploads",
    "dataset_upload_chunks",
)


def _legacy_file(path: Path, spec, *, first_release: bool) -> None:
    now = time.time()
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
        if first_release:
            for table in FIRST_RELEASE_DROPS:
                db.execute(f"DROP TABLE {table}")
            for column in ("info_json", "progress_json", "outputs_json"):
                db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
        spec_json = json.dumps(spec.to_dict(), separators=(",", ":"), sort_keys=True)
        db.execute(
            """INSERT INTO jobs (id, namespace, request_id, fingerprint, adapter_name, task, state,
               spec_json, hyperparameters_json, train_examples, validation_examples, created_at,
               updated_at, finished_at, metrics_json, adapter_version, attempts)
               VALUES ('job-old', 'default', 'old-request', 'f', 'intents', 'classification',
               'SUCCEEDED', ?, ?, 4, 0, ?, ?, ?, '{"accuracy": 0.75}', 1, 1)""",
            (spec_json, json.dumps(spec.hyperparameters.to_dict()), now - 60, now - 30, now - 30),
        )
        db.execute(
            """INSERT INTO adapter_versions (namespace, name, version, job_id, task, base_model,
               labels_json, metrics_json, lora_rank, size_bytes, created_at, seq)
               VALUES ('default', 'intents', 1, 'job-old', 'classification', 'tiny-bert',
               '["neg", "pos"]', '{}', 4, 123, ?, 1)""",
            (now - 30,),
        )
        db.execute("UPDATE registry_clock SET seq = 1")
        db.execute("INSERT INTO adapter_counters VALUES ('default', 'intents', 1)")
        if not first_release:
            db.execute(
                "INSERT INTO job_events VALUES ('job-old', 1, ?, 'state', ?)",
                (
                    now - 60,
                    json.dumps({"state": "QUEUED", "progress": None, "metrics": {}, "message": "queued"}),
                ),
            )


@pytest.mark.parametrize("first_release", [False, True], ids=["session-2-file", "first-release-file"])
def test_a_file_made_by_the_old_schema_is_upgraded_in_place(tmp_path, make_spec, first_release):
    path = tmp_path / "jobs.db"
    _legacy_file(path, make_spec(), first_release=first_release)

    store = SqliteStore(path)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
        old = store.get_job("default", "job-old")
        assert old.state is JobState.SUCCEEDED and old.metrics == {"accuracy": 0.75}
        assert old.created_at is not None and abs(old.created_at.timestamp() - (time.time() - 60)) < 5
        (version,) = store.adapter_versions("default", "intents")
        assert (version.version, version.labels, version.size_bytes) == (1, ("neg", "pos"), 123)
        events = store.list_events("default", "job-old")
        assert [e.message for e in events] == ([] if first_release else ["queued"])

        # New work beside the old rows: ids, versions and registry seqs continue.
        job, created = store.create_job(make_spec(request_id="new-request"))
        assert created and store.list_jobs("default")[0][0].id == job.id
        assert store.reserve_adapter_version("default", "intents") == 2
        claimed, _ = store.claim_job("w", 60)
        assert claimed.id == job.id
        store.append_events(job.id, [], worker_id="w")
        assert [e.type for e in store.list_events("default", job.id)] == [EventType.STATE] * 2
        # 0004 pointed `default` at the newest version (seq 2), so it cannot be deleted alone.
        assert [(a.alias, a.version, a.seq) for a in store.adapter_aliases("default", "intents")] == [
            ("default", 1, 2)
        ]
        with pytest.raises(FailedPrecondition, match="default"):
            store.delete_adapter_versions("default", "intents", 1)
        store.delete_adapter_versions("default", "intents")  # the alias (seq 3), the version (4)
        assert [c.seq for c in store.adapter_changes(0)] == [4]
    finally:
        store.close()
    # Opening it again is a no-op: already at head.
    SqliteStore(path).close()
