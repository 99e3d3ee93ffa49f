"""The status events history in the database: every streamed event, kept for good.

Rows are keyed by (import id, event id), so writing a batch twice (a retried flush)
leaves one row per event. Events are read back in their wire form, the one the
stream carries.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

import peewee

from .._checks import check_id, check_int
from .._wire import WIRE_KEYS, wire_form
from .bulk import insert_rows
from .runner import RunsOperations
from .tables import JSONField, NoteState, Table, bound_model, utcnow

__all__ = ["Event", "StatusEventRecord", "StatusHistory"]


class StatusEventRecord(Table):
    """A row of ``ds_status_events``: one event of an import, by its event id."""

    id = peewee.AutoField()
    import_id = peewee.CharField(max_length=128)
    sequence = peewee.BigIntegerField()
    status = peewee.CharField(max_length=16)
    note_id = peewee.CharField(max_length=128, null=True)
    message = peewee.TextField(null=True)
    context = peewee.TextField(null=True)
    current_count = peewee.IntegerField(null=True)
    total_count = peewee.IntegerField(null=True)
    indent_level = peewee.SmallIntegerField(default=0)
    metadata = JSONField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_status_events"
        indexes = ((("import_id", "sequence"), True),)


class Event(Protocol):
    """What the history stores of an event: a
    :class:`~dramatiq_shared.status.events.StatusEvent` is one."""

    @property
    def import_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def note_id(self) -> str | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def context(self) -> str | None: ...
    @property
    def current_count(self) -> int | None: ...
    @property
    def total_count(self) -> int | None: ...
    @property
    def indent_level(self) -> int: ...
    @property
    def metadata(self) -> Mapping[str, Any] | None: ...


# Columns in the order write() builds its rows.
_COLUMNS = (
    "import_id",
    "sequence",
    "status",
    "note_id",
    "message",
    "context",
    "current_count",
    "total_count",
    "indent_level",
    "metadata",
    "created_at",
)


class StatusHistory(RunsOperations):
    """Writes and reads status event records.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    @functools.cached_property
    def _table(self) -> type[StatusEventRecord]:
        return bound_model(StatusEventRecord, self.database)

    def write(self, published: Sequence[tuple[int, int, Event]], *, batch_size: int) -> None:
        """Store ``(event id, timestamp ms, event)`` triples; ones stored before are kept."""
        table = self._table
        rows = [
            (
                event.import_id,
                event_id,
                NoteState(event.status).value,
                event.note_id,
                event.message,
                event.context,
                event.current_count,
                event.total_count,
                event.indent_level,
                table.metadata.db_value(event.metadata),
                datetime.fromtimestamp(timestamp / 1000, timezone.utc).replace(tzinfo=None),
            )
            for event_id, timestamp, event in published
        ]
        if rows:
            self._runner.run(
                lambda: insert_rows(
                    table,
                    _COLUMNS,
                    rows,
                    batch_size=batch_size,
                    suffix=" ON CONFLICT (import_id, sequence) DO NOTHING",
                )
            )

    def last_id(self, import_id: str) -> int:
        """The id of the import's last stored event; 0 when it has none."""
        check_id("import_id", import_id)
        table = self._table
        query = table.select(peewee.fn.MAX(table.sequence)).where(table.import_id == import_id)
        return int(self._runner.run(query.scalar) or 0)

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        """An import's events with an id above ``after``, oldest first, in wire form."""
        check_id("import_id", import_id)
        check_int("after", after, minimum=0)
        check_int("limit", limit, minimum=1)
        table = self._table

        def read() -> list[dict[str, Any]]:
            query = (
                table.select()
                .where(table.import_id == import_id, table.sequence > after)
                .order_by(table.sequence)
                .limit(limit)
            )
            return [_wire(row) for row in query]

        return self._runner.run(read)


def _wire(row: StatusEventRecord) -> dict[str, Any]:
    timestamp = round(row.created_at.replace(tzinfo=timezone.utc).timestamp() * 1000)
    values = {name: getattr(row, name) for name in WIRE_KEYS}
    return wire_form(values, event_id=row.sequence, timestamp=timestamp)
