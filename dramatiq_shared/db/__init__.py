"""Persistence: Peewee models, the pipeline's idempotent operations, pattern tracking."""

from __future__ import annotations

from .models import (
    MODELS,
    NoteStatus,
    ParseStatus,
    create_tables,
    database_config,
    database_proxy,
    init_database,
)
from .operations import (
    DatabaseOperations,
    IngredientRef,
    NoteData,
    ParsedIngredientLineData,
    ParsedSegment,
    normalize_ingredient_name,
)
from .patterns import PatternRef, PatternTracker
from .status_history import StatusHistory

__all__ = [
    # Opening the database.
    "MODELS",
    "create_tables",
    "database_config",
    "database_proxy",
    "init_database",
    # Operations and their data.
    "DatabaseOperations",
    "IngredientRef",
    "NoteData",
    "NoteStatus",
    "ParseStatus",
    "ParsedIngredientLineData",
    "ParsedSegment",
    "normalize_ingredient_name",
    # Patterns.
    "PatternRef",
    "PatternTracker",
    # Status event history.
    "StatusHistory",
]
