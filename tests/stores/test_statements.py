"""Statement: peewee's SQL built once, run with new values, the same rows as the query."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import peewee
import pytest

from dramatiq_shared.db import DatabaseOperations
from dramatiq_shared.stores import bound_model
from dramatiq_shared.stores.statements import Statement, slot
from dramatiq_shared.stores.tables import Table, utcnow


class Counter(Table):
    name = peewee.CharField(max_length=16, unique=True)
    hits = peewee.IntegerField(default=0)
    seen = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_test_statement_counters"


@pytest.fixture
def table(database: peewee.Database) -> Iterator[type[Counter]]:
    bound = bound_model(Counter, database)
    database.create_tables([bound])
    yield bound
    database.drop_tables([bound])


def test_a_statement_runs_again_with_new_values(
    database: peewee.Database, table: type[Counter]
) -> None:
    insert = Statement(
        table.insert(name=slot("name"), hits=slot("hits"), seen=slot("seen"))
        .on_conflict_ignore()
        .returning(table.id)
    )
    bump = Statement(
        table.update(hits=table.hits + 1).where(table.name == slot("name")).returning(table.hits)
    )
    at = datetime(2026, 1, 2, 3, 4, 5)
    with database.connection_context():
        first = insert.first(name="a", hits=5, seen=at)
        assert first is not None
        assert insert.first(name="b", hits=0, seen=at) is not None
        assert insert.first(name="a", hits=9, seen=at) is None  # the conflict ignored
        assert bump.first(name="a") == (6,)
        assert bump.first(name="a") == (7,)
        assert bump.first(name="nobody") is None
        rows = {(c.name, c.hits, c.seen) for c in table.select()}
    assert rows == {("a", 7, at), ("b", 0, at)}


def test_a_statement_holds_the_sql_peewee_writes(table: type[Counter]) -> None:
    query = table.select(table.hits).where((table.name == slot("name")) & (table.hits > 3))
    statement = Statement(query)
    assert statement.sql == query.sql()[0]
    assert statement.names == {"name"}


def test_a_time_built_into_the_query_is_refused_naming_it(table: type[Counter]) -> None:
    # The column's default of utcnow would be the first run's time on every run.
    with pytest.raises(ValueError, match=r"datetime\.datetime\(.*give it a slot\(\)"):
        Statement(table.insert(name=slot("name"), hits=1))


def test_values_must_match_the_slots(database: peewee.Database, table: type[Counter]) -> None:
    statement = Statement(table.select().where(table.name == slot("name")))
    with pytest.raises(TypeError, match=r"takes the values \['name'\], got \[\]"):
        statement.rows()
    with pytest.raises(TypeError, match=r"got \['name', 'other'\]"):
        statement.rows(name="a", other=1)


def test_an_operations_statement_may_not_close_over_a_value(database: peewee.Database) -> None:
    operations = DatabaseOperations(database)
    line_id = "frozen"
    with pytest.raises(ValueError, match="may use only the models and slot"):
        operations._statement(
            lambda m: m.IngredientLine.select().where(m.IngredientLine.id == line_id)
        )
