"""The database operations of the recipe-import pipeline: idempotent and race-safe.

Messages are delivered at least once and many workers run at once, so every write
here is an upsert, an insert that ignores what exists, or a replace inside one
transaction: applying it twice leaves the same rows as applying it once, and two
workers applying it together leave the same rows as one. Input is validated whole
before anything is written; a refusal is a :class:`ValidationError` naming the
field, and nothing is half-written.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import peewee

from .._checks import INT32_MAX, check_id, check_int, check_text
from ..errors import ValidationError
from ..stores.bulk import chunks, existing, insert_rows, upsert_clause
from ..stores.runner import integrity_violation
from .models import DomainOperations, NoteState, ParseStatus, utcnow

__all__ = [
    "DatabaseOperations",
    "IngredientRef",
    "NoteData",
    "ParsedIngredientLineData",
    "ParsedSegment",
    "normalize_ingredient_name",
]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.Enum)

#: Longest reference text (a raw ingredient line) stored.
MAX_REFERENCE = 2_000
#: Longest segment value stored.
MAX_SEGMENT_VALUE = 1_000
#: Longest note title stored.
MAX_NOTE_TITLE = 1_000
#: Longest raw text of a note stored.
MAX_RAW_TEXT = 1_000_000
#: Longest normalised ingredient name stored.
MAX_INGREDIENT_NAME = 255

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
_SEGMENT_FIELDS = ("line", "position", "rule", "type", "value")

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_WHITESPACE = re.compile(r"\s+")


def _status(name: str, value: Any, kind: type[_E]) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in kind)
        raise ValidationError.invalid(name, value, f"one of {allowed}") from None


@dataclass(frozen=True)
class ParsedIngredientLineData:
    """One ingredient line of a note, as the parser found it.

    Parameters:
      block_index: The ingredient block (section) of the note, an int >= 0.
      line_index: The line within its block, an int >= 0.
      reference: The line's raw text, non-blank, at most 2,000 characters.
      note_id: The note the line belongs to; it must exist.
      parse_status: A :class:`ParseStatus` or its name. Default ``PENDING``.

    Raises:
      ValidationError: Naming the first field that is invalid.
    """

    block_index: int
    line_index: int
    reference: str
    note_id: str
    parse_status: ParseStatus | str = ParseStatus.PENDING

    def __post_init__(self) -> None:
        check_int("block_index", self.block_index, minimum=0, maximum=INT32_MAX)
        check_int("line_index", self.line_index, minimum=0, maximum=INT32_MAX)
        check_text("reference", self.reference, max_length=MAX_REFERENCE)
        check_id("note_id", self.note_id)
        status = _status("parse_status", self.parse_status, ParseStatus)
        object.__setattr__(self, "parse_status", status)


@dataclass(frozen=True)
class ParsedSegment:
    """One segment of a parsed line: an amount, a unit, an ingredient, a comment...

    Parameters:
      index: Position within the line, an int >= 0, unique per line.
      rule: The grammar rule that matched, non-blank, at most 128 characters.
      type: What the segment is (``"amount"``, ``"unit"``, ...), at most 64 characters.
      value: The matched text, at most 1,000 characters (may be empty).

    Raises:
      ValidationError: Naming the first field that is invalid.
    """

    index: int
    rule: str
    type: str
    value: str

    def __post_init__(self) -> None:
        check_int("index", self.index, minimum=0, maximum=INT32_MAX)
        check_text("rule", self.rule, max_length=128)
        check_text("type", self.type, max_length=64)
        check_text("value", self.value, max_length=MAX_SEGMENT_VALUE, allow_empty=True)


@dataclass(frozen=True)
class NoteData:
    """A recipe note.

    Parameters:
      import_id: The import it came with, which must exist; None for none.
      title: The recipe's title, at most 1,000 characters.
      raw_text: The note's text as received, at most 1,000,000 characters.
      status: A :class:`NoteState` or its name. Default ``PENDING``.

    Raises:
      ValidationError: Naming the first field that is invalid.
    """

    import_id: str | None = None
    title: str = ""
    raw_text: str = ""
    status: NoteState | str = NoteState.PENDING

    def __post_init__(self) -> None:
        if self.import_id is not None:
            check_id("import_id", self.import_id)
        check_text("title", self.title, max_length=MAX_NOTE_TITLE, allow_empty=True)
        check_text("raw_text", self.raw_text, max_length=MAX_RAW_TEXT, allow_empty=True)
        object.__setattr__(self, "status", _status("status", self.status, NoteState))


@dataclass(frozen=True)
class IngredientRef:
    """An ingredient row: its id, its normalised name, and whether this call created it."""

    id: int
    name: str
    is_new: bool


def normalize_ingredient_name(name: str) -> str:
    """Return the form under which an ingredient name is stored and matched.

    Unicode NFKC (so the ligature "ﬁ" is "fi" and a non-breaking space a space), zero-width
    characters and byte-order marks removed, runs of whitespace collapsed to one space,
    ends stripped, and case folded ("Straße" and "STRASSE" are one ingredient).
    """
    text = unicodedata.normalize("NFKC", name).translate(_ZERO_WIDTH)
    return _WHITESPACE.sub(" ", text).strip().casefold()


def _coerce(path: str, value: Any, kind: type[_T]) -> _T:
    """Accept ``kind`` or a mapping of its fields; prefix a refusal with ``path``."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ValidationError.invalid(path, value, f"a {kind.__name__} or a mapping of its fields")
    try:
        return kind(**value)
    except TypeError as error:
        raise ValidationError(f"{path}: {error}", field=path) from None
    except ValidationError as error:
        raise ValidationError(f"{path}.{error}", field=f"{path}.{error.field}") from None


class DatabaseOperations(DomainOperations):
    """The pipeline's writes, each idempotent, race-safe and retried on transient errors.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    # --- imports and notes -------------------------------------------------

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
        data = _coerce("data", data, NoteData)
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
        m = self._models
        check_id("note_id", note_id)
        return self._set_status(m.Note.status, note_id, _status("status", status, NoteState))

    def set_line_status(self, line_id: str, status: ParseStatus | str) -> bool:
        """Set a parsed line's status, leaving the rest of it as it is; setting the status
        it has changes nothing.

        Returns:
          False when there is no such line.

        Raises:
          ValidationError: When ``line_id`` or ``status`` is invalid.
        """
        m = self._models
        check_id("line_id", line_id)
        status = _status("status", status, ParseStatus)
        return self._set_status(m.IngredientLine.parse_status, line_id, status)

    def _set_status(self, column: peewee.Field, key: str, status: NoteState | ParseStatus) -> bool:
        model = column.model
        query = model.update({column: status.value, model.updated_at: utcnow()}).where(
            (model.id == key) & (column != status.value)
        )
        if self._runner.run(query.execute):
            return True
        return bool(self._runner.run(lambda: list(existing(model, model.id, [key]))))

    def line_counts(self, note_id: str) -> dict[ParseStatus, int]:
        """How many lines of a note have each parse status (every status, 0 included).

        Raises:
          ValidationError: When ``note_id`` is invalid.
        """
        m = self._models
        check_id("note_id", note_id)
        query = (
            m.IngredientLine.select(
                m.IngredientLine.parse_status, peewee.fn.COUNT(m.IngredientLine.id)
            )
            .where(m.IngredientLine.note == note_id)
            .group_by(m.IngredientLine.parse_status)
            .tuples()
        )
        counts = dict.fromkeys(ParseStatus, 0)
        # peewee's stubs type tuples() rows as models; they are (status, count) tuples.
        rows = cast("list[tuple[str, int]]", self._runner.run(lambda: list(query)))
        for status, count in rows:
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
            data = _coerce(f"{path}.data", pair[1], ParsedIngredientLineData)
            status = ParseStatus(data.parse_status).value
            rows.append(
                (line_id, data.note_id, data.block_index, data.line_index, data.reference, status)
            )
        _refuse_duplicates("line_id", [row[0] for row in rows])
        _refuse_duplicates("(note_id, block_index, line_index)", [row[1:4] for row in rows])
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

    # --- segments --------------------------------------------------------------

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
                _coerce(f"segments[{line_id!r}][{n}]", value, ParsedSegment)
                for n, value in enumerate(given)
            ]
            _refuse_duplicates(f"segments[{line_id!r}] index", [s.index for s in segments])
            counts[line_id] = len(segments)
            rows.extend((line_id, s.index, s.rule, s.type, s.value) for s in segments)

        def write() -> None:
            with self._runner.transaction():
                for ids in chunks(line_ids, self.config.batch_size):
                    locked = m.IngredientLine.select(m.IngredientLine.id).where(
                        m.IngredientLine.id.in_(ids)
                    )
                    if not self._runner.is_sqlite:  # SQLite's IMMEDIATE already excludes writers
                        locked = locked.order_by(m.IngredientLine.id).for_update()
                    found = {line.id for line in locked}
                    missing = [line_id for line_id in ids if line_id not in found]
                    if missing:
                        raise ValidationError(
                            f"line_id: no parsed ingredient line {missing[0]!r}", field="line_id"
                        )
                    m.Segment.delete().where(m.Segment.line.in_(ids)).execute()
                insert_rows(m.Segment, _SEGMENT_FIELDS, rows, batch_size=self.config.batch_size)

        self._runner.run(write)
        return counts

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
        query = m.LineIngredient.insert_many(
            [{"line": line_id, "ingredient": i} for i in ids]
        ).on_conflict_ignore()
        try:
            self._runner.run(query.execute)
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


def _refuse_duplicates(name: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValidationError(f"{name} {value!r} appears twice", field=name)
        seen.add(value)
