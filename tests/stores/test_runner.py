"""Transient database errors are retried for real: killed connections, locked SQLite files."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import peewee
import psycopg2
import pytest
from loguru import logger
from playhouse.pool import MaxConnectionsExceeded

from dramatiq_shared import DatabaseConfig
from dramatiq_shared.db import DatabaseOperations, create_tables, init_database
from dramatiq_shared.db.models import Import
from dramatiq_shared.stores.runner import is_transient


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    handler = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    yield messages
    logger.remove(handler)


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[peewee.Database]:
    database = init_database(DatabaseConfig(url=postgres_url, retry_attempts=3))
    create_tables(database)
    yield database
    database.close_all()


def terminate_other_backends(postgres_url: str) -> int:
    """Kill every other connection to the test database, as a server restart would."""
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        (killed,) = cursor.fetchone()
    admin.close()
    return int(killed)


def test_a_killed_pooled_connection_is_replaced(
    postgres: peewee.Database, postgres_url: str
) -> None:
    ops = DatabaseOperations(postgres)
    ops.create_or_update_import("before")  # leaves an idle connection in the pool
    assert terminate_other_backends(postgres_url) >= 1
    # The pool notices the dead connection at check-out, or the write fails and is
    # retried on a new one; either way it lands.
    ops.create_or_update_import("after", total_notes=3)
    assert Import.get_by_id("after").total_notes == 3


def test_a_killed_connection_the_caller_holds_is_replaced_too(
    postgres: peewee.Database, postgres_url: str, warnings: list[str]
) -> None:
    ops = DatabaseOperations(postgres)
    postgres.connect()
    try:
        terminate_other_backends(postgres_url)
        ops.create_or_update_import("held")
    finally:
        postgres.close()
    assert Import.select().count() == 1
    assert any(m.startswith("Transient database error, retry 1 of 3") for m in warnings)


def test_inside_the_callers_transaction_nothing_is_retried(
    postgres: peewee.Database, postgres_url: str, warnings: list[str]
) -> None:
    ops = DatabaseOperations(postgres)
    with (  # noqa: PT012 - the transaction is the point
        pytest.raises((peewee.OperationalError, peewee.InterfaceError)),
        postgres.atomic(),
    ):
        terminate_other_backends(postgres_url)
        ops.create_or_update_import("lost")
    assert not warnings  # only the caller can run its transaction again
    postgres.manual_close()
    assert Import.select().count() == 0


def locked_sqlite(path: Path) -> sqlite3.Connection:
    """Another process's view: a connection holding SQLite's write lock."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_locked_sqlite_database_is_retried_until_the_lock_goes(
    tmp_path: Path, warnings: list[str]
) -> None:
    path = tmp_path / "locked.db"
    database = init_database(DatabaseConfig(url=f"sqlite:///{path}", timeout=100, retry_attempts=8))
    create_tables(database)
    holder = locked_sqlite(path)
    threading.Timer(0.4, holder.rollback).start()
    DatabaseOperations(database).create_or_update_import("eventually")
    holder.close()
    assert Import.get_by_id("eventually")
    assert any("database is locked" in m for m in warnings)


def test_when_retries_run_out_the_error_propagates(tmp_path: Path, warnings: list[str]) -> None:
    path = tmp_path / "locked.db"
    database = init_database(DatabaseConfig(url=f"sqlite:///{path}", timeout=50, retry_attempts=2))
    create_tables(database)
    holder = locked_sqlite(path)
    try:
        with pytest.raises(peewee.OperationalError, match="database is locked"):
            DatabaseOperations(database).create_or_update_import("never")
    finally:
        holder.close()
    assert len(warnings) == 2


def test_a_pool_holds_at_most_connection_limit_connections(postgres_url: str) -> None:
    database = init_database(DatabaseConfig(url=postgres_url, connection_limit=2, timeout=300))
    hold, held = threading.Event(), threading.Barrier(3, timeout=5)
    failures: list[BaseException] = []

    def use(wait: bool) -> None:
        try:
            with database.connection_context():
                database.execute_sql("SELECT 1")
                if wait:
                    held.wait()
                    hold.wait(5)
        except BaseException as error:  # collected for the assertion below
            failures.append(error)

    holders = [threading.Thread(target=use, args=(True,)) for _ in range(2)]
    for thread in holders:
        thread.start()
    held.wait()
    use(False)  # a third connection while two are out: waits 300 ms, then gives up
    hold.set()
    for thread in holders:
        thread.join()
    database.close_all()
    assert [type(f) for f in failures] == [MaxConnectionsExceeded]


def test_what_counts_as_transient(postgres_url: str, tmp_path: Path) -> None:
    connection = psycopg2.connect(postgres_url)
    with pytest.raises(psycopg2.Error) as division, connection.cursor() as cursor:
        cursor.execute("SELECT 1/0")
    connection.close()
    assert not is_transient(division.value)

    holder = locked_sqlite(tmp_path / "x.db")
    other = sqlite3.connect(tmp_path / "x.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("CREATE TABLE t (x)")
    holder.close()
    other.close()
    assert is_transient(locked.value)
    assert not is_transient(ValueError("nothing to do with a database"))
