"""Queries made into SQL once, then run many times with new values.

Peewee builds a query's SQL afresh each time it runs it: a tree of nodes walked per
value and per column, which costs more CPU than SQLite takes to run a short
statement. Profiled on the recipe import, a line's dozen statements spent more than
half their time in ``Context.sql``. A :class:`Statement` is a peewee query built
once, with a :func:`slot` where each value goes; running it fills the slots of the
SQL peewee made and hands it to the driver. Peewee still writes the SQL, so the
dialect (quoting, ``ON CONFLICT``, ``RETURNING``, placeholders) is its own.

Values go to the driver as they are: give each in the form its column stores (a
JSON column's text, an enum's value), as peewee's field conversions do not run.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import peewee

__all__ = ["Statement", "slot"]

# A value peewee put into the SQL's parameters while building it would be the same
# on every run: fine for a number or a word, wrong for a time (a column's default of
# utcnow, say), which must then be a slot.
_FROZEN_OK = (int, float, str, bytes, type(None))


class _Slot:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"slot({self.name!r})"


def slot(name: str) -> peewee.Value:
    """The place of the value called ``name`` in a query given to :class:`Statement`.

    Parameters:
      name: The keyword :meth:`Statement.execute` takes the value by.
    """
    return peewee.Value(_Slot(name), converter=False, unpack=False)


class Statement:
    """A peewee query whose SQL is built once; :meth:`execute` runs it with values.

    Parameters:
      query: The query, bound to its database through its model, with a
        :func:`slot` for every value that changes between runs.

    Raises:
      ValueError: When the query holds a value that is not a slot and would be frozen
        into every run wrongly (a date or time: a column default of "now"); naming it.
    """

    def __init__(self, query: peewee.BaseQuery) -> None:
        sql, params = query.sql()
        self.database: peewee.Database = query._database  # type: ignore[attr-defined]
        self.sql: str = sql
        self._params: list[Any] = list(params)
        self._slots: list[tuple[int, str]] = []
        for position, value in enumerate(self._params):
            if isinstance(value, _Slot):
                self._slots.append((position, value.name))
            elif not isinstance(value, _FROZEN_OK) or isinstance(value, datetime.date):
                raise ValueError(
                    f"Statement: the value {value!r} at parameter {position} of {sql!r}"
                    " would be the same on every run; give it a slot()"
                )
        self.names: frozenset[str] = frozenset(name for _, name in self._slots)

    def execute(self, **values: Any) -> Any:
        """Run the statement with ``values`` in its slots; the driver's cursor.

        Raises:
          TypeError: When a slot has no value or a value has no slot.
        """
        if values.keys() != self.names:
            raise TypeError(
                f"Statement takes the values {sorted(self.names)}, got {sorted(values)}"
            )
        params = self._params.copy()
        for position, name in self._slots:
            params[position] = values[name]
        return self.database.execute_sql(self.sql, params)  # type: ignore[no-untyped-call]

    def rows(self, **values: Any) -> Sequence[tuple[Any, ...]]:
        """Run the statement and read every row it returns (the cursor is left spent).

        A cursor of a SQLite ``RETURNING`` statement left unread would keep the
        statement, and a caller's savepoint, open.
        """
        return self.execute(**values).fetchall()  # type: ignore[no-any-return]

    def first(self, **values: Any) -> tuple[Any, ...] | None:
        """The first row the statement returns, or None; every row is read."""
        rows = self.rows(**values)
        return rows[0] if rows else None

    def count(self, **values: Any) -> int:
        """Run a write and tell how many rows it changed."""
        return int(self.execute(**values).rowcount)
