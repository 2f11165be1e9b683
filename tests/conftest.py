"""Fixtures shared by every test directory: a real PostgreSQL when one is reachable."""

from __future__ import annotations

import os

import pytest

# ---------------------------------------------------------------- PostgreSQL
# CI sets TEST_POSTGRES_DSN: then an unreachable server fails the PostgreSQL tests.
# Without it they use the local default and skip, with the reason, when nothing answers.
POSTGRES_DSN_ENV = "TEST_POSTGRES_DSN"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    """A DSN of a reachable PostgreSQL database the tests may create schemas in."""
    required = os.environ.get(POSTGRES_DSN_ENV, "")
    dsn = required or DEFAULT_POSTGRES_DSN
    try:
        import psycopg
    except ImportError as exc:
        if required:
            pytest.fail(f"{POSTGRES_DSN_ENV} is set but psycopg is not installed: {exc}")
        pytest.skip(f"PostgreSQL store tests need psycopg ({exc})")
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        if required:
            pytest.fail(
                f"{POSTGRES_DSN_ENV}={dsn} is set but PostgreSQL is unreachable: {' '.join(str(exc).split())}"
            )
        pytest.skip(
            f"no PostgreSQL reachable at {dsn} ({' '.join(str(exc).split())}); "
            f"set {POSTGRES_DSN_ENV} to require one"
        )
    return dsn


@pytest.fixture
def postgres_dsn(postgres_admin_dsn: str):
    """A DSN whose search_path is a fresh, empty schema of its own, dropped after the test:
    each test migrates and uses a database of its own, as a new deployment would."""
    import uuid

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    schema = "tuneserve_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = (conninfo_to_dict(postgres_admin_dsn).get("options") or "") + f" -c search_path={schema}"
    try:
        yield make_conninfo(postgres_admin_dsn, options=options.strip())
    finally:
        with psycopg.connect(postgres_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
