"""PatternTracker on SQLite and PostgreSQL: a (pattern, line) pair counts once."""

from __future__ import annotations

from typing import Any

import peewee
import pytest

from dramatiq_shared import ValidationError
from dramatiq_shared.db import PatternTracker
from dramatiq_shared.db.models import LinePattern, PatternLine


def test_a_line_counts_once_however_often_it_is_tracked(database: peewee.Database) -> None:
    tracker = PatternTracker(database)
    first = tracker.track(["amount", "unit", "ingredient"], "l-1")
    assert (first.occurrences, first.is_new) == (1, True)
    again = tracker.track(["amount", "unit", "ingredient"], "l-1")
    assert again == type(first)(first.id, 1, False)
    second = tracker.track(["amount", "unit", "ingredient"], "l-2")
    assert (second.id, second.occurrences, second.is_new) == (first.id, 2, False)
    other = tracker.track(["ingredient"], "l-1")
    assert other.id != first.id
    assert (other.occurrences, other.is_new) == (1, True)

    pattern = LinePattern.get_by_id(first.id)
    assert pattern.rules == ["amount", "unit", "ingredient"]
    assert pattern.example_line_id == "l-1"  # the first sighting stays the example
    assert pattern.last_seen >= pattern.first_seen
    assert PatternLine.select().count() == 3


def test_order_matters_and_unicode_rules_are_kept(database: peewee.Database) -> None:
    tracker = PatternTracker(database)
    a = tracker.track(["unit", "amount"], "l-1")
    b = tracker.track(["amount", "unit"], "l-1")
    c = tracker.track(["größe", "menge"], "l-1")
    assert len({a.id, b.id, c.id}) == 3
    assert LinePattern.get_by_id(c.id).rules == ["größe", "menge"]


@pytest.mark.parametrize(
    ("rules", "line_id", "message"),
    [
        ([], "l-1", "rules must be a non-empty list of rule names"),
        ("amount", "l-1", "rules must be a non-empty list"),
        (["amount", ""], "l-1", r"rules\[1\] must be a non-blank string"),
        (["amount", 3], "l-1", r"rules\[1\] must be a non-blank string"),
        (["r"] * 257, "l-1", "at most 256 rule names"),
        (["amount"], "", "example_line_id must be a non-blank string"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(
    database: peewee.Database, rules: Any, line_id: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PatternTracker(database).track(rules, line_id)
    assert LinePattern.select().count() == 0
