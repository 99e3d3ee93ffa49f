"""The data the pipeline's operations take, validated whole when it is built.

A refusal is a :class:`~dramatiq_shared.errors.ValidationError` naming the field.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .._checks import INT32_MAX, check_id, check_int, check_text
from ..errors import ValidationError
from .models import NoteState, ParseStatus

__all__ = [
    "MAX_INGREDIENT_NAME",
    "MAX_NOTE_TITLE",
    "MAX_RAW_TEXT",
    "MAX_REFERENCE",
    "MAX_SEGMENT_VALUE",
    "IngredientRef",
    "NoteData",
    "ParsedIngredientLineData",
    "ParsedSegment",
    "checked_status",
    "coerce",
    "normalize_ingredient_name",
    "refuse_duplicates",
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

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_WHITESPACE = re.compile(r"\s+")


def checked_status(name: str, value: Any, kind: type[_E]) -> _E:
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
        status = checked_status("parse_status", self.parse_status, ParseStatus)
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
        object.__setattr__(self, "status", checked_status("status", self.status, NoteState))


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


def coerce(path: str, value: Any, kind: type[_T]) -> _T:
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


def refuse_duplicates(name: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValidationError(f"{name} {value!r} appears twice", field=name)
        seen.add(value)
