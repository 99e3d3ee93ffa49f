"""init_database and create_tables on the real engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import peewee
import psycopg2
import pytest

from dramatiq_shared import ConfigError, DatabaseConfig
from dramatiq_shared.db import (
    MODELS,
    DatabaseOperations,
    PatternTracker,
    create_tables,
    database_config,
    init_database,
)
from dramatiq_shared.db.models import database_proxy
from dramatiq_shared.stores import DeadLetterStore, StatusHistory, open_database


def test_create_tables_is_safe_to_run_twice(database: peewee.Database) -> None:
    create_tables(database)
    create_tables()
    assert set(database.get_tables()) >= {m._meta.table_name for m in MODELS}


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(sqlite_url: str) -> None:
    database = init_database(DatabaseConfig(url=sqlite_url, timeout=2500))
    with database.connection_context():
        pragma = lambda name: database.execute_sql(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 2500
    assert database_proxy.obj is database
    assert database_config(database).timeout == 2500


def test_postgres_url_parts_are_decoded(postgres_url: str) -> None:
    # Same server and database, the user spelled with percent-encoding.
    encoded = postgres_url.replace("//dramatiq_shared:", "//dramatiq%5Fshared:")
    database = init_database(encoded)
    try:
        with database.connection_context():
            assert database.execute_sql("SELECT current_user").fetchone() == ("dramatiq_shared",)
    finally:
        database.close_all()


def test_a_bad_url_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="url must be a sqlite:/// or postgresql:// URL"):
        init_database("mongodb://localhost/x")


def test_only_init_database_points_the_proxy(sqlite_url: str, tmp_path: Path) -> None:
    database = init_database(sqlite_url)
    other = open_database(f"sqlite:///{tmp_path / 'other.db'}")
    create_tables(other)
    for build in (DatabaseOperations, PatternTracker, DeadLetterStore, StatusHistory):
        build(other)
    DatabaseOperations(f"sqlite:///{tmp_path / 'third.db'}")  # opened by the constructor
    assert database_proxy.obj is database


def test_create_tables_from_several_processes_at_once_on_a_fresh_postgres(
    missing_database_url: str,
) -> None:
    # Worker processes booting beside init-db: CREATE TABLE IF NOT EXISTS alone races
    # with itself on PostgreSQL (a unique violation in pg_type, seen 1 in 6 here).
    parts = urlsplit(missing_database_url)
    admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    admin.autocommit = True
    name = parts.path.lstrip("/")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        code = (
            "from dramatiq_shared.db import create_tables, init_database;"
            f" create_tables(init_database({missing_database_url!r}))"
        )
        creators = [
            subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        failures = [c.communicate(timeout=60)[1] for c in creators if c.wait(60) != 0]
        assert failures == []
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
