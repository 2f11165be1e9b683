"""load_settings: defaults <- TUNESERVE_* env <- overrides, every value validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneserve_server.config import ConfigError, Settings, load_settings


def test_defaults_with_an_empty_environment():
    s = load_settings(env={})
    assert s == Settings()
    assert s.job_db_path == Path(".tuneserve") / "jobs.db"
    assert s.adapter_path == Path(".tuneserve") / "adapters"


def test_environment_is_read_and_converted_per_type():
    s = load_settings(
        env={
            "TUNESERVE_PORT": "6000",
            "TUNESERVE_MAX_BATCH_WAIT_MS": "5.5",
            "TUNESERVE_SPAWN_WORKER": "no",
            "TUNESERVE_DATA_DIR": "/srv/ts",
            "TUNESERVE_LOG_FORMAT": "json",
            "PATH": "/usr/bin",  # not ours: ignored
        }
    )
    assert s.port == 6000
    assert s.max_batch_wait_ms == 5.5
    assert s.spawn_worker is False
    assert s.data_dir == Path("/srv/ts")
    assert s.job_db_path == Path("/srv/ts/jobs.db")
    assert s.log_format == "json"


def test_overrides_win_over_the_environment_and_none_means_unset():
    s = load_settings(
        overrides={"port": 7000, "host": "0.0.0.0", "max_batch_rows": "16", "device": None},
        env={"TUNESERVE_PORT": "6000", "TUNESERVE_DEVICE": "cuda:1", "TUNESERVE_GRACE_S": "3"},
    )
    assert s.port == 7000
    assert s.host == "0.0.0.0"
    assert s.max_batch_rows == 16  # a string override is converted like an env value
    assert s.device == "cuda:1"  # None override leaves the env value
    assert s.grace_s == 3.0


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"TUNESERVE_PORT": "abc"}, "port"),
        ({"TUNESERVE_MAX_BATCH_WAIT_MS": "fast"}, "max_batch_wait_ms"),
        ({"TUNESERVE_SPAWN_WORKER": "maybe"}, "spawn_worker"),
        ({"TUNESERVE_PORT": "70000"}, "port"),
        ({"TUNESERVE_MAX_BATCH_ROWS": "0"}, "max_batch_rows"),
        ({"TUNESERVE_WORKER_LEASE_S": "1"}, "worker_lease_s"),
        ({"TUNESERVE_DEVICE": "tpu"}, "device"),
        ({"TUNESERVE_LOG_FORMAT": "xml"}, "log_format"),
        ({"TUNESERVE_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_values_raise_config_error_naming_the_setting(env, name):
    with pytest.raises(ConfigError, match=name):
        load_settings(env=env)


def test_unknown_settings_are_refused():
    with pytest.raises(ConfigError, match="TUNESERVE_PROT"):
        load_settings(env={"TUNESERVE_PROT": "1"})
    with pytest.raises(ConfigError, match="prot"):
        load_settings(overrides={"prot": 1}, env={})


def test_choices_are_enforced_on_overrides_and_replace_too():
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(overrides={"log_format": "yaml"}, env={})
    with pytest.raises(ConfigError, match="max_queue_rows"):
        Settings().replace(max_queue_rows=0)


def test_to_env_round_trips_through_load_settings():
    original = load_settings(
        overrides={
            "port": 0,
            "data_dir": Path("/tmp/ts-data"),
            "job_db": Path("/tmp/ts-data/other.db"),
            "spawn_worker": False,
            "max_batch_wait_ms": 0.25,
            "log_format": "json",
            "device": "cuda:1",
        },
        env={},
    )
    env = original.to_env()
    assert env["TUNESERVE_SPAWN_WORKER"] == "false"
    assert "TUNESERVE_ADAPTER_DIR" not in env  # None is left out, so the default applies
    assert load_settings(env=env) == original
    assert load_settings(env=Settings().to_env()) == Settings()


def test_database_url_is_read_passed_to_workers_and_masked_by_config_show(capsys, monkeypatch):
    dsn = "postgresql://tuneserve:s3cret-pw@db.internal:5432/tuneserve"
    assert Settings().database_url == ""  # default: SQLite in data_dir
    s = load_settings(env={"TUNESERVE_DATABASE_URL": dsn})
    assert s.database_url == dsn
    assert load_settings(env=s.to_env()).database_url == dsn  # the worker child gets it
    assert s.redacted()["database_url"] == "***"
    assert Settings().redacted()["database_url"] == ""  # unset stays visibly unset

    from tuneserve_server.cli import main

    monkeypatch.delenv("TUNESERVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("TUNESERVE_CONFIG", raising=False)
    # main() configures logging onto capsys' stream; keep later tests' logging off it.
    monkeypatch.setattr("tuneserve_server.observability.logging.configure_logging", lambda *a, **k: None)
    assert main(["config", "show", "--database-url", dsn]) == 0
    out = capsys.readouterr().out
    assert "database_url = ***" in out.splitlines()
    assert "s3cret" not in out and "db.internal" not in out


def test_client_target_variable_is_not_a_setting():
    from tuneserve_server.config import load_settings

    assert load_settings(env={"TUNESERVE_TARGET": "localhost:1"}).port == 50051
