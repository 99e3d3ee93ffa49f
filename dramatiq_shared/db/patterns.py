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

from .._checks import check_id, check_text
from ..errors import ValidationError
from ..stores.statements import slot
from ..stores.tables import JSONField
from .models import DomainOperations, utcnow

__all__ = ["PatternRef", "PatternTracker"]

#: Most rules a pattern may have.
MAX_RULES = 256

# The rules column's encoding, made once: a peewee field is not free to build per line.
_RULES = JSONField()


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
        stored = _RULES.db_value(names)
        now = utcnow()
        insert_pattern = self._statement(
            lambda m: (
                m.LinePattern.insert(
                    key=slot("key"),
                    rules=slot("rules"),
                    example_line_id=slot("line"),
                    occurrences=0,
                    first_seen=slot("now"),
                    last_seen=slot("now"),
                )
                .on_conflict_ignore()
                .returning(m.LinePattern.id)
            )
        )
        find_pattern = self._statement(
            lambda m: m.LinePattern.select(m.LinePattern.id).where(m.LinePattern.key == slot("key"))
        )
        insert_pair = self._statement(
            lambda m: (
                m.PatternLine.insert(pattern=slot("pattern"), line_id=slot("line"))
                .on_conflict_ignore()
                .returning(m.PatternLine.id)
            )
        )
        add_one = self._statement(
            lambda m: (
                m.LinePattern.update(
                    occurrences=m.LinePattern.occurrences + 1, last_seen=slot("now")
                )
                .where(m.LinePattern.id == slot("pattern"))
                .returning(m.LinePattern.occurrences)
            )
        )
        read_count = self._statement(
            lambda m: m.LinePattern.select(m.LinePattern.occurrences).where(
                m.LinePattern.id == slot("pattern")
            )
        )

        def write() -> PatternRef:
            with self._runner.transaction():
                created = insert_pattern.first(key=key, rules=stored, line=line_id, now=now)
                (pattern_id,) = created or find_pattern.first(key=key) or ()
                if insert_pair.first(pattern=pattern_id, line=line_id):
                    (occurrences,) = add_one.first(pattern=pattern_id, now=now) or ()
                else:
                    (occurrences,) = read_count.first(pattern=pattern_id) or ()
            return PatternRef(id=pattern_id, occurrences=occurrences, is_new=created is not None)

        return self._runner.run(write)
