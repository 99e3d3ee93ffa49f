"""Counting the distinct rule sequences the parser produces, exactly, under redelivery.

A pattern is the sequence of grammar rules a line parsed into
(``["amount", "unit", "ingredient"]``). :class:`PatternTracker` keeps one row per
distinct sequence with the number of distinct lines that showed it: a (pattern, line)
pair is counted once however often its message is redelivered, and however many
workers track it at the same moment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._checks import check_id, check_text
from ..errors import ValidationError
from .models import DomainOperations, utcnow

__all__ = ["PatternRef", "PatternTracker"]

#: Most rules a pattern may have.
MAX_RULES = 256


@dataclass(frozen=True)
class PatternRef:
    """A pattern row: its id, how many distinct lines showed it, whether this call made it."""

    id: int
    occurrences: int
    is_new: bool


class PatternTracker(DomainOperations):
    """Tracks rule sequences and counts the distinct lines that showed each.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    def track(self, rules: Sequence[str], example_line_id: str) -> PatternRef:
        """Count ``example_line_id`` as an occurrence of the pattern ``rules``.

        One transaction: insert the pattern unless it exists, insert the (pattern, line)
        pair unless it exists, and only when the pair is new add one to the count. The
        unique indexes arbitrate between concurrent callers, so of all callers with one
        new pattern exactly one sees ``is_new=True``, and the count equals the number of
        distinct lines.

        Parameters:
          rules: The rule names in order; 1 to 256 non-blank strings.
          example_line_id: The line that showed the pattern; the first one is kept as
            the pattern's example.

        Returns:
          The pattern's id, its occurrence count after this call, and whether it is new.

        Raises:
          ValidationError: When ``rules`` or ``example_line_id`` is invalid.
        """
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or not rules:
            raise ValidationError.invalid("rules", rules, "a non-empty list of rule names")
        if len(rules) > MAX_RULES:
            raise ValidationError.invalid("rules", rules, f"at most {MAX_RULES} rule names")
        names = [check_text(f"rules[{n}]", rule, max_length=128) for n, rule in enumerate(rules)]
        line_id = check_id("example_line_id", example_line_id)
        encoded = json.dumps(names, separators=(",", ":"), ensure_ascii=False)
        key = hashlib.sha256(encoded.encode()).hexdigest()
        m = self._models

        def write() -> PatternRef:
            with self._runner.transaction():
                created = _inserted(
                    m.LinePattern.insert(key=key, rules=names, example_line_id=line_id)
                    .on_conflict_ignore()
                    .returning(m.LinePattern.id)
                )
                pattern_id = created or m.LinePattern.get(m.LinePattern.key == key).id
                counted = _inserted(
                    m.PatternLine.insert(pattern=pattern_id, line_id=line_id)
                    .on_conflict_ignore()
                    .returning(m.PatternLine.id)
                )
                if counted:
                    (occurrences,) = _returned(
                        m.LinePattern.update(
                            occurrences=m.LinePattern.occurrences + 1, last_seen=utcnow()
                        )
                        .where(m.LinePattern.id == pattern_id)
                        .returning(m.LinePattern.occurrences)
                    )
                else:
                    occurrences = m.LinePattern.get_by_id(pattern_id).occurrences
            return PatternRef(id=pattern_id, occurrences=occurrences, is_new=created is not None)

        return self._runner.run(write)


def _returned(query: Any) -> tuple[Any, ...]:
    """The first row a RETURNING query gave, or an empty tuple when it touched none."""
    return next(iter(query.tuples().execute()), ())


def _inserted(query: Any) -> int | None:
    """The id an INSERT ... RETURNING id gave, or None when it inserted nothing."""
    row = _returned(query)
    return row[0] if row else None
