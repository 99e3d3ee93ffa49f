"""Two databases in one process: each store and operations object stays on its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest
from playhouse.pool import PooledDatabase

from dramatiq_shared import DatabaseConfig
from dramatiq_shared.db import DatabaseOperations, NoteData, create_tables, init_database
from dramatiq_shared.stores import DeadLetterStore
from tests.stores.test_dead_letters import message

THREADS = 4
WRITES = 25


def opened(url: str) -> peewee.Database:
    database = init_database(DatabaseConfig(url=url, connection_limit=THREADS + 2))
    create_tables(database)
    return database


def closed(database: peewee.Database) -> None:
    if isinstance(database, PooledDatabase):
        database.close_all()
    else:
        database.close()


def ids(database: peewee.Database, table: str) -> list[str]:
    """The ids of a table's rows, read with plain SQL so no model is involved."""
    with database.connection_context():
        return sorted(row[0] for row in database.execute_sql(f"SELECT id FROM {table}"))


def dead_letters(database: peewee.Database) -> list[str]:
    with database.connection_context():
        query = "SELECT message_id FROM ds_dead_letters"
        return sorted(row[0] for row in database.execute_sql(query))


@pytest.fixture
def other(tmp_path: Path) -> Iterator[peewee.Database]:
    """A second SQLite database beside the `database` fixture's."""
    database = opened(f"sqlite:///{tmp_path / 'other.db'}")
    yield database
    closed(database)


def test_a_store_built_on_another_database_leaves_the_operations_on_theirs(
    database: peewee.Database, other: peewee.Database
) -> None:
    operations = DatabaseOperations(database)
    DeadLetterStore(other)
    operations.create_or_update_import("imp-1")
    assert ids(database, "ds_imports") == ["imp-1"]
    assert ids(other, "ds_imports") == []


@pytest.fixture(params=["sqlite_url", "postgres_url"], ids=["with-sqlite", "with-postgres"])
def first(request: pytest.FixtureRequest) -> Iterator[peewee.Database]:
    database = opened(request.getfixturevalue(request.param))
    yield database
    closed(database)


def test_two_databases_written_from_threads_at_once_each_get_their_own_rows(
    first: peewee.Database, other: peewee.Database
) -> None:
    stores = {
        "a": (DatabaseOperations(first), DeadLetterStore(first)),
        "b": (DatabaseOperations(other), DeadLetterStore(other)),
    }
    start = threading.Barrier(2 * THREADS)
    errors: list[BaseException] = []

    def write(side: str, thread: int) -> None:
        operations, letters = stores[side]
        start.wait()
        try:
            for n in range(WRITES):
                key = f"{side}-{thread}-{n}"
                operations.create_or_update_import(key)
                operations.create_or_update_note(key, NoteData(import_id=key))
                letters.record(
                    {**message(), "message_id": key}, error_type="E", error_message="", reason=""
                )
        except BaseException as error:  # reported below, with the rows
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(side, n)) for side in stores for n in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for side, database in (("a", first), ("b", other)):
        expected = sorted(f"{side}-{t}-{n}" for t in range(THREADS) for n in range(WRITES))
        assert ids(database, "ds_imports") == expected
        assert ids(database, "ds_notes") == expected
        assert dead_letters(database) == expected
