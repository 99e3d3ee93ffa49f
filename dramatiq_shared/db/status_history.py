"""The status events history in the database: every streamed event, kept for good.

Rows are keyed by (import id, event id), so writing a batch twice (a retried flush)
leaves one row per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import peewee

from .._checks import check_id, check_int
from ..status.events import NoteStatus, StatusEvent
from .bulk import insert_rows
from .models import StatusEventRecord
from .runner import RunsOperations

__all__ = ["StatusHistory"]

_FIELDS = (
    StatusEventRecord.import_id,
    StatusEventRecord.sequence,
    StatusEventRecord.status,
    StatusEventRecord.note_id,
    StatusEventRecord.message,
    StatusEventRecord.context,
    StatusEventRecord.current_count,
    StatusEventRecord.total_count,
    StatusEventRecord.indent_level,
    StatusEventRecord.metadata,
    StatusEventRecord.created_at,
)


class StatusHistory(RunsOperations):
    """Writes and reads status event records.

    Takes the arguments of :class:`~dramatiq_shared.db.runner.RunsOperations`.
    """

    def write(self, published: Sequence[tuple[int, int, StatusEvent]], *, batch_size: int) -> None:
        """Store ``(event id, timestamp ms, event)`` triples; ones stored before are kept."""
        rows = [
            (
                event.import_id,
                event_id,
                NoteStatus(event.status).value,
                event.note_id,
                event.message,
                event.context,
                event.current_count,
                event.total_count,
                event.indent_level,
                StatusEventRecord.metadata.db_value(event.metadata),
                datetime.fromtimestamp(timestamp / 1000, timezone.utc).replace(tzinfo=None),
            )
            for event_id, timestamp, event in published
        ]
        if rows:
            self._runner.run(
                lambda: insert_rows(
                    StatusEventRecord,
                    _FIELDS,
                    rows,
                    batch_size=batch_size,
                    suffix=" ON CONFLICT (import_id, sequence) DO NOTHING",
                )
            )

    def last_id(self, import_id: str) -> int:
        """The id of the import's last stored event; 0 when it has none."""
        check_id("import_id", import_id)
        query = StatusEventRecord.select(peewee.fn.MAX(StatusEventRecord.sequence)).where(
            StatusEventRecord.import_id == import_id
        )
        return int(self._runner.run(query.scalar) or 0)

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> list[dict[str, Any]]:
        """An import's events with an id above ``after``, oldest first, in wire form."""
        check_id("import_id", import_id)
        check_int("after", after, minimum=0)
        check_int("limit", limit, minimum=1)

        def read() -> list[dict[str, Any]]:
            query = (
                StatusEventRecord.select()
                .where(StatusEventRecord.import_id == import_id, StatusEventRecord.sequence > after)
                .order_by(StatusEventRecord.sequence)
                .limit(limit)
            )
            return [_wire(row) for row in query]

        return self._runner.run(read)


def _wire(row: StatusEventRecord) -> dict[str, Any]:
    event = StatusEvent(
        import_id=row.import_id,
        status=row.status,
        note_id=row.note_id,
        message=row.message,
        context=row.context,
        current_count=row.current_count,
        total_count=row.total_count,
        indent_level=row.indent_level,
        metadata=row.metadata,
    )
    timestamp = round(row.created_at.replace(tzinfo=timezone.utc).timestamp() * 1000)
    return event.to_wire(event_id=row.sequence, timestamp=timestamp)
