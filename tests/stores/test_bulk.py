"""insert_rows: the same rows and the same refusals whichever way the values travel
(bound parameters on SQLite, one JSON array on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import peewee
import pytest

from dramatiq_shared.db import init_database
from dramatiq_shared.stores import bound_model
from dramatiq_shared.stores.bulk import insert_rows
from dramatiq_shared.stores.tables import Table


class Row(Table):
    key = peewee.CharField(max_length=8, primary_key=True)
    count = peewee.BigIntegerField(null=True)
    ratio = peewee.FloatField(null=True)
    flag = peewee.BooleanField(null=True)
    text = peewee.TextField(null=True)
    at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "ds_test_bulk_rows"


FIELDS = ("key", "count", "ratio", "flag", "text", "at")


@pytest.fixture
def table(database: peewee.Database) -> Iterator[type[Row]]:
    bound = bound_model(Row, database)
    database.create_tables([bound])
    yield bound
    database.drop_tables([bound])


@pytest.fixture
def postgres_table(postgres_url: str) -> Iterator[type[Row]]:
    """The table on PostgreSQL only, where the rows travel as JSON."""
    database = init_database(postgres_url)
    bound = bound_model(Row, database)
    database.create_tables([bound])
    yield bound
    database.drop_tables([bound])
    database.close_all()  # type: ignore[attr-defined]


def test_every_type_comes_back_as_it_went_in(table: type[Row]) -> None:
    at = datetime(2026, 12, 2, 8, 0, 0, 123_000)
    rows = [
        ("a", 2**40, 0.25, True, 'quote " and \\ and é', at),
        ("b", None, None, None, None, None),
        ("c", -1, -1e30, False, "", None),
    ]
    insert_rows(table, FIELDS, rows, batch_size=2)
    found = {r.key: r for r in table.select()}
    assert [(r.count, r.ratio, r.flag, r.text, r.at) for r in (found["a"], found["b"])] == [
        (2**40, 0.25, True, 'quote " and \\ and é', at),
        (None, None, None, None, None),
    ]
    assert (found["c"].count, found["c"].flag, found["c"].text) == (-1, False, "")
    assert found["c"].ratio == pytest.approx(-1e30, rel=1e-6)  # a REAL column


def test_an_aware_time_is_stored_as_utc_naive_as_the_driver_would(
    postgres_table: type[Row],
) -> None:
    at = datetime(2026, 12, 2, 8, 0, tzinfo=timezone(timedelta(hours=2)))
    insert_rows(postgres_table, FIELDS, [("a", 1, None, None, None, at)], batch_size=1)
    assert postgres_table.get().at == datetime(2026, 12, 2, 6, 0)


def test_a_value_json_cannot_carry_goes_in_all_the_same(postgres_table: type[Row]) -> None:
    nan = float("nan")
    insert_rows(postgres_table, FIELDS, [("nan", 1, nan, None, None, None)], batch_size=10)
    (row,) = postgres_table.select()
    assert row.ratio != row.ratio  # NaN, bound as a parameter


def test_a_value_too_long_for_its_column_is_refused_not_cut(postgres_table: type[Row]) -> None:
    row = ("far too long", 1, None, None, None, None)
    with pytest.raises(peewee.DataError, match="too long"):
        insert_rows(postgres_table, FIELDS, [row], batch_size=1)
    assert postgres_table.select().count() == 0


def test_the_upsert_suffix_applies_to_every_row(table: type[Row]) -> None:
    insert_rows(table, FIELDS, [("a", 1, None, None, "first", None)], batch_size=5)
    insert_rows(
        table,
        FIELDS,
        [("a", 2, None, None, "second", None), ("b", 3, None, None, "new", None)],
        batch_size=5,
        suffix=' ON CONFLICT ("key") DO UPDATE SET "count" = EXCLUDED."count"',
    )
    assert sorted((r.key, r.count, r.text) for r in table.select()) == [
        ("a", 2, "first"),
        ("b", 3, "new"),
    ]
