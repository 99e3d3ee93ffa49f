"""The database operations of the recipe-import pipeline: idempotent and race-safe.

Messages are delivered at least once and many workers run at once, so every write
here is an upsert, an insert that ignores what exists, or a replace inside one
transaction: applying it twice leaves the same rows as applying it once, and two
workers applying it together leave the same rows as one. Input is validated whole
before anything is written; a refusal is a :class:`ValidationError` naming the
field, and nothing is half-written.

The operations are written in two halves, :mod:`~dramatiq_shared.db.notes` (imports,
notes, lines) and :mod:`~dramatiq_shared.db.ingredients` (segments, ingredients);
the data they take is in :mod:`~dramatiq_shared.db.data`.
"""

from __future__ import annotations

from .data import (
    MAX_INGREDIENT_NAME,
    MAX_NOTE_TITLE,
    MAX_RAW_TEXT,
    MAX_REFERENCE,
    MAX_SEGMENT_VALUE,
    IngredientRef,
    NoteData,
    ParsedIngredientLineData,
    ParsedSegment,
    normalize_ingredient_name,
)
from .ingredients import IngredientOperations
from .notes import NoteOperations

__all__ = [
    "MAX_INGREDIENT_NAME",
    "MAX_NOTE_TITLE",
    "MAX_RAW_TEXT",
    "MAX_REFERENCE",
    "MAX_SEGMENT_VALUE",
    "DatabaseOperations",
    "IngredientRef",
    "NoteData",
    "ParsedIngredientLineData",
    "ParsedSegment",
    "normalize_ingredient_name",
]


class DatabaseOperations(NoteOperations, IngredientOperations):
    """The pipeline's writes, each idempotent, race-safe and retried on transient errors.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """
