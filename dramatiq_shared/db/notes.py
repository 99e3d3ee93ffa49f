"""The operations on imports, notes and their parsed ingredient lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import peewee

from .._checks import INT32_MAX, check_id, check_int
from ..errors import ValidationError
from ..stores.bulk import existing, insert_rows, upsert_clause
from ..stores.runner import integrity_violation
from ..stores.statements import Statement, slot
from .data import NoteData, ParsedIngredientLineData, checked_status, coerce, refuse_duplicates
from .models import DomainOperations, NoteState, ParseStatus, utcnow

__all__ = ["NoteOperations"]

# Field orders of the rows the batch operations build.
_NOTE_FIELDS = ("id", "import_ref", "title", "raw_text", "status", "created_at", "updated_at")
_LINE_FIELDS = (
    "id",
    "note",
    "block_index",
    "line_index",
    "reference",
    "parse_status",
    "created_at",
    "updated_at",
)


class NoteOperations(DomainOperations):
    """Imports, notes and parsed lines: each write idempotent and race-safe."""

    def create_or_update_import(self, import_id: str, *, total_notes: int | None = None) -> None:
        """Record an import, or update its note count.

        Raises:
          ValidationError: When ``import_id`` or ``total_notes`` is invalid.
        """
        m = self._models
        check_id("import_id", import_id)
        if total_notes is not None:
            check_int("total_notes", total_notes, minimum=0, maximum=INT32_MAX)
        query = m.Import.insert(id=import_id, total_notes=total_notes).on_conflict(
            conflict_target=[m.Import.id],
            update={m.Import.total_notes: peewee.EXCLUDED.total_notes},
        )
        self._runner.run(query.execute)

    def create_or_update_note(self, note_id: str, data: NoteData | Mapping[str, Any]) -> None:
        """Record a note, or update its fields when they changed.

        Raises:
          ValidationError: When a field is invalid or the import does not exist.
        """
        m = self._models
        check_id("note_id", note_id)
        data = coerce("data", data, NoteData)
        now = utcnow()
        row = (note_id, data.import_id, data.title, data.raw_text, NoteState(data.status).value)

        def write() -> None:
            insert_rows(
                m.Note,
                _NOTE_FIELDS,
                [(*row, now, now)],
                batch_size=1,
                suffix=upsert_clause(m.Note, "id", _NOTE_FIELDS[1:5], "updated_at"),
            )

        try:
            self._runner.run(write)
        except peewee.IntegrityError as error:
            if integrity_violation(error) != "foreign_key":
                raise
            raise ValidationError(
                f"import_id: no import {data.import_id!r}", field="import_id"
            ) from None

    def set_note_status(self, note_id: str, status: NoteState | str) -> bool:
        """Set a note's status; setting the status it has changes nothing.

        Returns:
          False when there is no such note.

        Raises:
          ValidationError: When ``note_id`` or ``status`` is invalid.
        """
        check_id("note_id", note_id)
        status = checked_status("status", status, NoteState)
        update = self._statement(
            lambda m: m.Note.update(status=slot("status"), updated_at=slot("now")).where(
                (m.Note.id == slot("id")) & (m.Note.status != slot("status"))
            )
        )
        found = self._statement(lambda m: m.Note.select(m.Note.id).where(m.Note.id == slot("id")))
        return self._set_status(update, found, note_id, status)

    def set_line_status(self, line_id: str, status: ParseStatus | str) -> bool:
        """Set a parsed line's status, leaving the rest of it as it is; setting the status
        it has changes nothing.

        Returns:
          False when there is no such line.

        Raises:
          ValidationError: When ``line_id`` or ``status`` is invalid.
        """
        check_id("line_id", line_id)
        status = checked_status("status", status, ParseStatus)
        update = self._statement(
            lambda m: m.IngredientLine.update(
                parse_status=slot("status"), updated_at=slot("now")
            ).where(
                (m.IngredientLine.id == slot("id"))
                & (m.IngredientLine.parse_status != slot("status"))
            )
        )
        return self._set_status(update, self._line_found, line_id, status)

    def _set_status(
        self, update: Statement, found: Statement, key: str, status: NoteState | ParseStatus
    ) -> bool:
        if self._runner.run(lambda: update.count(id=key, status=status.value, now=utcnow())):
            return True
        return self._runner.run(lambda: found.first(id=key)) is not None

    def parsed_ingredient_line(self, line_id: str) -> ParsedIngredientLineData | None:
        """The parsed line ``line_id`` as it is stored, or None when there is none.

        Raises:
          ValidationError: When ``line_id`` is invalid.
        """
        check_id("line_id", line_id)
        read = self._statement(
            lambda m: m.IngredientLine.select(
                m.IngredientLine.block_index,
                m.IngredientLine.line_index,
                m.IngredientLine.reference,
                m.IngredientLine.note,
                m.IngredientLine.parse_status,
            ).where(m.IngredientLine.id == slot("id"))
        )
        row = self._runner.run(lambda: read.first(id=line_id))
        return None if row is None else ParsedIngredientLineData(*row)

    def line_counts(self, note_id: str) -> dict[ParseStatus, int]:
        """How many lines of a note have each parse status (every status, 0 included).

        Raises:
          ValidationError: When ``note_id`` is invalid.
        """
        check_id("note_id", note_id)
        query = self._statement(
            lambda m: (
                m.IngredientLine.select(
                    m.IngredientLine.parse_status, peewee.fn.COUNT(m.IngredientLine.id)
                )
                .where(m.IngredientLine.note == slot("note"))
                .group_by(m.IngredientLine.parse_status)
            )
        )
        counts = dict.fromkeys(ParseStatus, 0)
        for status, count in self._runner.run(lambda: query.rows(note=note_id)):
            counts[ParseStatus(status)] = count
        return counts

    # --- parsed ingredient lines ---------------------------------------------

    def create_or_update_parsed_ingredient_line(
        self, line_id: str, data: ParsedIngredientLineData | Mapping[str, Any]
    ) -> None:
        """Record a parsed line, or update it; one INSERT ... ON CONFLICT statement.

        A redelivered identical write changes nothing, not even ``updated_at``.

        Raises:
          ValidationError: When a field is invalid, the note does not exist, or another
            line already holds this (note, block, line) position.
        """
        self.create_or_update_parsed_ingredient_lines([(line_id, data)])

    def create_or_update_parsed_ingredient_lines(
        self,
        lines: Mapping[str, ParsedIngredientLineData | Mapping[str, Any]]
        | Iterable[tuple[str, ParsedIngredientLineData | Mapping[str, Any]]],
    ) -> int:
        """Record many parsed lines at once: one upsert statement per ``batch_size`` lines.

        All or nothing: every line is validated first, and all are written in one
        transaction.

        Parameters:
          lines: ``{line_id: data}``, or ``(line_id, data)`` pairs; data as
            :class:`ParsedIngredientLineData` or a mapping of its fields.

        Returns:
          How many lines were given.

        Raises:
          ValidationError: Naming the line and field, when one is invalid, a line id
            appears twice, a note does not exist, or a position is taken.
        """
        m = self._models
        pairs = list(lines.items() if isinstance(lines, Mapping) else lines)
        now = utcnow()
        rows: list[tuple[Any, ...]] = []
        for position, pair in enumerate(pairs):
            path = f"lines[{position}]"
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValidationError.invalid(path, pair, "a (line_id, data) pair")
            line_id = check_id(f"{path}.line_id", pair[0])
            data = coerce(f"{path}.data", pair[1], ParsedIngredientLineData)
            status = ParseStatus(data.parse_status).value
            rows.append(
                (line_id, data.note_id, data.block_index, data.line_index, data.reference, status)
            )
        refuse_duplicates("line_id", [row[0] for row in rows])
        refuse_duplicates("(note_id, block_index, line_index)", [row[1:4] for row in rows])
        if not rows:
            return 0

        def write() -> None:
            with self._runner.transaction():
                insert_rows(
                    m.IngredientLine,
                    _LINE_FIELDS,
                    [(*row, now, now) for row in rows],
                    batch_size=self.config.batch_size,
                    suffix=upsert_clause(m.IngredientLine, "id", _LINE_FIELDS[1:6], "updated_at"),
                )

        try:
            self._runner.run(write)
        except peewee.IntegrityError as error:
            raise self._explain_line_violation(error, rows) from None
        return len(rows)

    def _explain_line_violation(
        self, error: peewee.IntegrityError, rows: list[tuple[Any, ...]]
    ) -> Exception:
        m = self._models
        # Only on the failure path: find the row the database refused, to name it.
        violation = integrity_violation(error)
        notes = {row[1] for row in rows}
        if violation == "foreign_key":
            found = self._runner.run(lambda: set(existing(m.Note, m.Note.id, notes)))
            position, row = next((n, r) for n, r in enumerate(rows) if r[1] not in found)
            field = f"lines[{position}].data.note_id"
            return ValidationError(f"{field}: no note {row[1]!r}", field=field)
        if violation == "unique":
            ids = {row[0] for row in rows}

            def taken() -> dict[tuple[str, int, int], str]:
                query = m.IngredientLine.select(
                    m.IngredientLine.id,
                    m.IngredientLine.note,
                    m.IngredientLine.block_index,
                    m.IngredientLine.line_index,
                ).where(m.IngredientLine.note.in_(list(notes)))
                return {
                    (row["note"], row["block_index"], row["line_index"]): row["id"]
                    # peewee's stubs type dicts() rows as models; they are dicts.
                    for row in cast("Iterable[dict[str, Any]]", query.dicts())
                    if row["id"] not in ids
                }

            holders = self._runner.run(taken)
            for position, row in enumerate(rows):
                if row[1:4] in holders:
                    field = f"lines[{position}]"
                    return ValidationError(
                        f"{field}: note {row[1]!r} already has line {holders[row[1:4]]!r} at"
                        f" block_index {row[2]}, line_index {row[3]}",
                        field=field,
                    )
        return error
