-- The SQLite schema as the store created it before alembic owned it (sqlite_store.SCHEMA
-- at commit 9d9726b). test_sqlite_legacy_upgrade.py builds a file from it.
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    adapter_name TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    hyperparameters_json TEXT NOT NULL,
    train_examples INTEGER NOT NULL,
    validation_examples INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    train_loss REAL,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    adapter_version INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    info_json TEXT NOT NULL DEFAULT '{}',
    progress_json TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '{}',
    UNIQUE (namespace, request_id)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_ns ON jobs (namespace, seq);
CREATE TABLE IF NOT EXISTS adapter_versions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    task TEXT NOT NULL,
    base_model TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    lora_rank INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version)
);
CREATE INDEX IF NOT EXISTS adapter_versions_seq ON adapter_versions (seq);
CREATE TABLE IF NOT EXISTS adapter_counters (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    next_version INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS registry_clock (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT OR IGNORE INTO registry_clock (id, seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    body_json TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    task TEXT NOT NULL,
    format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    rows INTEGER NOT NULL,
    usable_rows INTEGER NOT NULL,
    report_json TEXT NOT NULL,
    text_field TEXT NOT NULL,
    label_field TEXT NOT NULL,
    created_at REAL NOT NULL,
    content BLOB NOT NULL,
    UNIQUE (namespace, upload_id)
);
CREATE INDEX IF NOT EXISTS datasets_ns ON datasets (namespace, seq);
CREATE TABLE IF NOT EXISTS dataset_uploads (
    namespace TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    header_json TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    touched_at REAL NOT NULL,
    PRIMARY KEY (namespace, upload_id)
);
CREATE TABLE IF NOT EXISTS dataset_upload_chunks (
    namespace TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    start_byte INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (namespace, upload_id, start_byte)
);
