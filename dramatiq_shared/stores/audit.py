"""The audit of operators' actions: who forced which breaker, replayed which dead letters.

One row an action, written before its answer goes back, so an action the audit could
not record is refused rather than done unrecorded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee

from .._checks import check_id, check_int
from .runner import RunsOperations
from .tables import JSONField, Table, bound_model, utcnow

__all__ = ["AuditEntry", "AuditLog", "AuditRecord"]


class AuditRecord(Table):
    """A row of ``ds_audit``: one operator action."""

    id = peewee.AutoField()
    at = peewee.DateTimeField(default=utcnow, index=True)
    who = peewee.CharField(max_length=128)
    action = peewee.CharField(max_length=64)
    target = peewee.CharField(max_length=255)
    details = JSONField(null=True)
    count = peewee.IntegerField(null=True)

    class Meta:
        table_name = "ds_audit"


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action."""

    id: int
    at: datetime
    who: str
    action: str
    target: str
    details: dict[str, Any] | None
    count: int | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, ``at`` as ISO 8601 UTC."""
        return {
            "id": self.id,
            "at": f"{self.at:%Y-%m-%dT%H:%M:%S}Z",
            "who": self.who,
            "action": self.action,
            "target": self.target,
            "details": self.details,
            "count": self.count,
        }


class AuditLog(RunsOperations):
    """Records and lists operator actions.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    @functools.cached_property
    def _table(self) -> type[AuditRecord]:
        return bound_model(AuditRecord, self.database)

    def record(
        self,
        *,
        who: str,
        action: str,
        target: str,
        details: dict[str, Any] | None = None,
        count: int | None = None,
    ) -> int:
        """Record an action; its row's id.

        Parameters:
          who: Who did it (an admin token's subject).
          action: What was done (``breaker.open``, ``dead_letters.retry``...).
          target: What it was done on (a breaker's name, a filter's summary).
          details: More facts, JSON-serialisable.
          count: How many things it touched, when it touched several.
        """
        check_id("who", who)
        check_id("action", action)
        table = self._table
        return int(
            self._runner.run(
                lambda: table.insert(
                    who=who, action=action, target=target[:255], details=details, count=count
                ).execute()
            )
        )

    def list(self, *, limit: int = 100) -> list[AuditEntry]:
        """The newest actions first, at most ``limit``."""
        check_int("limit", limit, minimum=1)
        table = self._table

        def read() -> list[AuditEntry]:
            query = table.select().order_by(table.id.desc()).limit(limit)
            return [
                AuditEntry(r.id, r.at, r.who, r.action, r.target, r.details, r.count) for r in query
            ]

        return self._runner.run(read)
