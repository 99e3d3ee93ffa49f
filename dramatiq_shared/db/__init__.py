"""The recipe-import domain: Peewee models, the pipeline's idempotent operations, patterns.

Built on :mod:`dramatiq_shared.stores`, whose :class:`StatusHistory` is also
reachable from here, where it used to live.
"""

from __future__ import annotations

from ..stores.status_history import StatusHistory
from .models import (
    MODELS,
    DomainModels,
    NoteState,
    ParseStatus,
    create_tables,
    database_config,
    database_proxy,
    domain_models,
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

__all__ = [
    # Opening the database.
    "MODELS",
    "DomainModels",
    "create_tables",
    "database_config",
    "database_proxy",
    "domain_models",
    "init_database",
    # Operations and their data.
    "DatabaseOperations",
    "IngredientRef",
    "NoteData",
    "NoteState",
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
