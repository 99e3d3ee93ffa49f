"""The audit table: made with the others, idempotently, and listed newest first."""

from __future__ import annotations

import peewee

from dramatiq_shared.db import create_tables
from dramatiq_shared.stores import AuditLog


def test_actions_are_recorded_and_listed_newest_first(database: peewee.Database) -> None:
    create_tables(database)  # again: the fixture made them once already
    audit = AuditLog(database)
    first = audit.record(who="alice", action="breaker.open", target="usda-api")
    second = audit.record(
        who="bob",
        action="dead_letters.retry",
        target="actor=parse_note",
        details={"filter": {"actor": "parse_note"}},
        count=3,
    )
    entries = audit.list()
    assert [e.id for e in entries] == [second, first]
    assert entries[0].as_dict()["details"] == {"filter": {"actor": "parse_note"}}
    assert (entries[0].who, entries[0].count, entries[1].count) == ("bob", 3, None)
    assert entries[1].as_dict()["at"].endswith("Z")
    assert [e.id for e in audit.list(limit=1)] == [second]
