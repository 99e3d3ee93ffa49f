"""The operations on the segments of parsed lines and on ingredients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import peewee

from .._checks import check_id, check_int, check_text
from ..errors import ValidationError
from ..stores.bulk import chunks, existing, insert_rows
from ..stores.runner import integrity_violation
from ..stores.statements import slot
from .data import (
    MAX_INGREDIENT_NAME,
    MAX_REFERENCE,
    IngredientRef,
    ParsedSegment,
    coerce,
    normalize_ingredient_name,
    refuse_duplicates,
)
from .models import DomainOperations, utcnow

__all__ = ["IngredientOperations"]

# Field order of the rows replace_parsed_segments_many() builds.
_SEGMENT_FIELDS = ("line", "position", "rule", "type", "value")


class IngredientOperations(DomainOperations):
    """Segments and ingredients: each write idempotent and race-safe."""

    def replace_parsed_segments(
        self, line_id: str, segments: Iterable[ParsedSegment | Mapping[str, Any]]
    ) -> int:
        """Replace a line's segments with ``segments``, in one transaction.

        Every segment is validated first (indices unique and >= 0, rule and type
        non-blank, value a string of at most 1,000 characters); on any error the line
        keeps the segments it had. Concurrent replacements of one line are serialised
        by a lock on the line, so the last one wins whole.

        Returns:
          The number of segments the line now has.

        Raises:
          ValidationError: Naming the segment and field, or the line when it does not exist.
        """
        return self.replace_parsed_segments_many({line_id: segments})[line_id]

    def replace_parsed_segments_many(
        self, segments_by_line: Mapping[str, Iterable[ParsedSegment | Mapping[str, Any]]]
    ) -> dict[str, int]:
        """Replace the segments of many lines: a handful of statements per ``batch_size``.

        All or nothing, like :meth:`replace_parsed_segments`.

        Returns:
          The number of segments each line now has.

        Raises:
          ValidationError: Naming the line, segment and field, or a line that does not exist.
        """
        m = self._models
        if not isinstance(segments_by_line, Mapping):
            raise ValidationError.invalid(
                "segments_by_line", segments_by_line, "a mapping of line id to segments"
            )
        line_ids = sorted(check_id("line_id", line_id) for line_id in segments_by_line)
        rows: list[tuple[str, int, str, str, str]] = []
        counts: dict[str, int] = {}
        for line_id in line_ids:
            given = segments_by_line[line_id]
            if isinstance(given, (str, bytes, Mapping)) or not isinstance(given, Iterable):
                raise ValidationError.invalid(f"segments[{line_id!r}]", given, "a list of segments")
            segments = [
                coerce(f"segments[{line_id!r}][{n}]", value, ParsedSegment)
                for n, value in enumerate(given)
            ]
            refuse_duplicates(f"segments[{line_id!r}] index", [s.index for s in segments])
            counts[line_id] = len(segments)
            rows.extend((line_id, s.index, s.rule, s.type, s.value) for s in segments)

        def write() -> None:
            with self._runner.transaction():
                for ids in chunks(line_ids, self.config.batch_size):
                    found = self._lock_lines(ids)
                    missing = [line_id for line_id in ids if line_id not in found]
                    if missing:
                        raise ValidationError(
                            f"line_id: no parsed ingredient line {missing[0]!r}", field="line_id"
                        )
                    if len(ids) == 1:
                        delete_one.execute(line=ids[0])
                    else:
                        m.Segment.delete().where(m.Segment.line.in_(ids)).execute()
                insert_rows(m.Segment, _SEGMENT_FIELDS, rows, batch_size=self.config.batch_size)

        delete_one = self._statement(
            lambda m: m.Segment.delete().where(m.Segment.line == slot("line"))
        )

        self._runner.run(write)
        return counts

    def _lock_lines(self, ids: Sequence[str]) -> set[str]:
        """Which of the lines ``ids`` exist, locked against other writers until commit."""
        m = self._models
        if len(ids) == 1:  # a line's own message: the statement built once
            if self._runner.is_sqlite:  # SQLite's IMMEDIATE already excludes writers
                lock = self._line_found
            else:
                lock = self._statement(
                    lambda m: (
                        m.IngredientLine.select(m.IngredientLine.id)
                        .where(m.IngredientLine.id == slot("id"))
                        .for_update()
                    )
                )
            return {row[0] for row in lock.rows(id=ids[0])}
        locked = m.IngredientLine.select(m.IngredientLine.id).where(m.IngredientLine.id.in_(ids))
        if not self._runner.is_sqlite:
            locked = locked.order_by(m.IngredientLine.id).for_update()
        return {line.id for line in locked}

    # --- ingredients -------------------------------------------------------------

    def find_or_create_ingredient(self, name: str, reference: str = "") -> IngredientRef:
        """Return the ingredient called ``name`` (normalised), creating it if needed.

        Race-safe through the unique name: an INSERT that ignores a conflict, then a
        read. Of any number of concurrent callers, in any number of processes, exactly
        one sees ``is_new=True``.

        Parameters:
          name: The ingredient's name; see :func:`normalize_ingredient_name`.
          reference: The text it was found in, kept from the first sighting.

        Raises:
          ValidationError: When the name is blank once normalised, or a text is too long.
        """
        return self.find_or_create_ingredients([(name, reference)])[0]

    def find_or_create_ingredients(
        self, items: Iterable[tuple[str, str] | str]
    ) -> list[IngredientRef]:
        """:meth:`find_or_create_ingredient` for many names: two statements per ``batch_size``.

        Parameters:
          items: Names, or ``(name, reference)`` pairs.

        Returns:
          One :class:`IngredientRef` per item, in order. A name given twice (once
          normalised) is new at most at its first position.

        Raises:
          ValidationError: Naming the item, when one is invalid.
        """
        m = self._models
        wanted: dict[str, str] = {}
        order: list[str] = []
        for position, item in enumerate(items):
            name, reference = (item, "") if isinstance(item, str) else _pair(position, item)
            path = f"ingredients[{position}]"
            check_text(f"{path}.name", name, max_length=10 * MAX_INGREDIENT_NAME)
            check_text(f"{path}.reference", reference, max_length=MAX_REFERENCE, allow_empty=True)
            normalized = normalize_ingredient_name(name)
            check_text(f"{path}.name (normalised)", normalized, max_length=MAX_INGREDIENT_NAME)
            wanted.setdefault(normalized, reference)
            order.append(normalized)
        # Sorted, so concurrent batches take the unique index's locks in one order
        # and cannot deadlock on PostgreSQL.
        names = sorted(wanted)

        def write() -> tuple[set[str], dict[str, int]]:
            created: set[str] = set()
            ids: dict[str, int] = {}
            if len(names) == 1:  # a line's own ingredient: statements built once
                (name,) = names
                row = insert_one.first(name=name, reference=wanted[name], now=utcnow())
                if row:
                    created.add(name)
                (ids[name],) = row or find_one.first(name=name) or ()
                return created, ids
            for chunk in chunks(names, self.config.batch_size):
                inserted = (
                    m.Ingredient.insert_many([{"name": n, "reference": wanted[n]} for n in chunk])
                    .on_conflict_ignore()
                    .returning(m.Ingredient.id, m.Ingredient.name)
                    .tuples()
                    .execute()
                )
                created.update(name for _, name in inserted)
                query = m.Ingredient.select(m.Ingredient.id, m.Ingredient.name).where(
                    m.Ingredient.name.in_(chunk)
                )
                ids.update((row.name, row.id) for row in query)
            return created, ids

        insert_one = self._statement(
            lambda m: (
                m.Ingredient.insert(
                    name=slot("name"), reference=slot("reference"), created_at=slot("now")
                )
                .on_conflict_ignore()
                .returning(m.Ingredient.id)
            )
        )
        find_one = self._statement(
            lambda m: m.Ingredient.select(m.Ingredient.id).where(m.Ingredient.name == slot("name"))
        )
        created, ids = self._runner.run(write)
        refs = []
        for name in order:
            refs.append(IngredientRef(id=ids[name], name=name, is_new=name in created))
            created.discard(name)
        return refs

    def link_line_ingredients(self, line_id: str, ingredient_ids: Iterable[int]) -> None:
        """Record that a line mentions these ingredients; links that exist are kept.

        Raises:
          ValidationError: When an id is invalid or the line or an ingredient does not exist.
        """
        m = self._models
        check_id("line_id", line_id)
        ids = sorted(
            {check_int("ingredient_ids[]", i, minimum=1, maximum=2**63 - 1) for i in ingredient_ids}
        )
        if not ids:
            return
        rows = [(line_id, i) for i in ids]
        try:
            self._runner.run(
                lambda: insert_rows(
                    m.LineIngredient,
                    ("line", "ingredient"),
                    rows,
                    batch_size=self.config.batch_size,
                    suffix=" ON CONFLICT DO NOTHING",
                )
            )
        except peewee.IntegrityError as error:
            if integrity_violation(error) != "foreign_key":
                raise
            if not self._runner.run(
                lambda: list(existing(m.IngredientLine, m.IngredientLine.id, [line_id]))
            ):
                raise ValidationError(
                    f"line_id: no parsed ingredient line {line_id!r}", field="line_id"
                ) from None
            found = set(
                self._runner.run(lambda: list(existing(m.Ingredient, m.Ingredient.id, ids)))
            )
            missing = next(i for i in ids if i not in found)
            raise ValidationError(
                f"ingredient_ids: no ingredient {missing}", field="ingredient_ids"
            ) from None


def _pair(position: int, item: Any) -> tuple[Any, Any]:
    if isinstance(item, tuple) and len(item) == 2:
        return item
    raise ValidationError.invalid(
        f"ingredients[{position}]", item, "a name or a (name, reference) pair"
    )
