"""Peewee models of the recipe-import pipeline's domain, and the database they live in.

The models are declared bound to :data:`database_proxy`, for code that talks to one
database per process: :func:`init_database` opens a database and points the proxy
at it, and nothing else ever does. The library's own operations do not use the
proxy: each one works with :func:`domain_models` of the database it was given, copies
of these models bound to it and to nothing else, so operations on two databases
work side by side.

Tables (all prefixed ``ds_`` so they sit beside an application's own); the last four
belong to the stores of :mod:`dramatiq_shared.stores`:

=============================  ==================================================
``ds_imports``                 one import of many notes
``ds_notes``                   a recipe note: title, raw text, status
``ds_parsed_ingredient_lines`` a line of a note, unique per (note, block, line)
``ds_parsed_segments``         a line's segments, unique per (line, index)
``ds_ingredients``             ingredients by normalised, unique name
``ds_line_ingredients``        which ingredients a line mentions
``ds_line_patterns``           distinct rule sequences with occurrence counts
``ds_pattern_lines``           each (pattern, line) pair once, so counts stay exact
``ds_status_events``           status event history, ordered per import
``ds_completions``             per import: items expected, done, failed, finished
``ds_completion_items``        each item counted once
``ds_dead_letters``            messages that failed for good, with their history
=============================  ==================================================
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import CodeType

import peewee

from ..config import DatabaseConfig
from ..stores.audit import AuditRecord
from ..stores.completions import Completion, CompletionItem
from ..stores.connection import database_config, open_database
from ..stores.dead_letters import DeadLetter
from ..stores.runner import RunsOperations
from ..stores.statements import Statement, slot
from ..stores.status_history import StatusEventRecord
from ..stores.tables import JSONField, NoteState, Table, bound_model, utcnow

__all__ = [
    "MODELS",
    "DomainModels",
    "DomainOperations",
    "Import",
    "Ingredient",
    "IngredientLine",
    "LineIngredient",
    "LinePattern",
    "Note",
    "NoteState",
    "ParseStatus",
    "PatternLine",
    "Segment",
    "create_tables",
    "database_config",
    "database_proxy",
    "domain_models",
    "init_database",
    "utcnow",
]

#: The database the models declared here use; only :func:`init_database` points it.
database_proxy = peewee.DatabaseProxy()


class ParseStatus(str, enum.Enum):
    """How parsing an ingredient line went."""

    PENDING = "PENDING"
    CORRECT = "CORRECT"
    INCORRECT = "INCORRECT"
    ERROR = "ERROR"


class _Model(Table):
    class Meta:
        database = database_proxy


class Import(_Model):
    id = peewee.CharField(max_length=128, primary_key=True)
    total_notes = peewee.IntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_imports"


class Note(_Model):
    id = peewee.CharField(max_length=128, primary_key=True)
    import_ref = peewee.ForeignKeyField(
        Import, column_name="import_id", backref="notes", on_delete="CASCADE", null=True
    )
    title = peewee.TextField(default="")
    raw_text = peewee.TextField(default="")
    status = peewee.CharField(max_length=16, default=NoteState.PENDING.value)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_notes"


class IngredientLine(_Model):
    id = peewee.CharField(max_length=128, primary_key=True)
    note = peewee.ForeignKeyField(Note, backref="lines", on_delete="CASCADE")
    block_index = peewee.IntegerField()
    line_index = peewee.IntegerField()
    reference = peewee.TextField()
    parse_status = peewee.CharField(max_length=16, default=ParseStatus.PENDING.value)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_parsed_ingredient_lines"
        indexes = ((("note", "block_index", "line_index"), True),)


class Segment(_Model):
    # "position", not "index": a field named index would hide Model.index().
    line = peewee.ForeignKeyField(IngredientLine, backref="segments", on_delete="CASCADE")
    position = peewee.IntegerField()
    rule = peewee.CharField(max_length=128)
    type = peewee.CharField(max_length=64)
    value = peewee.TextField()

    class Meta:
        table_name = "ds_parsed_segments"
        # The natural key is the primary key: one index to maintain per row, not two.
        primary_key = peewee.CompositeKey("line", "position")


class Ingredient(_Model):
    id = peewee.AutoField()
    name = peewee.CharField(max_length=255, unique=True)
    reference = peewee.TextField(default="")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_ingredients"


class LineIngredient(_Model):
    line = peewee.ForeignKeyField(IngredientLine, on_delete="CASCADE")
    ingredient = peewee.ForeignKeyField(Ingredient, on_delete="CASCADE")

    class Meta:
        table_name = "ds_line_ingredients"
        primary_key = peewee.CompositeKey("line", "ingredient")


class LinePattern(_Model):
    # The rule sequence is identified by a digest: a unique index on the sequence
    # itself would cap its length (PostgreSQL's btree entries are ~2.7 kB at most).
    id = peewee.AutoField()
    key = peewee.CharField(max_length=64, unique=True)
    rules = JSONField()
    occurrences = peewee.IntegerField(default=0)
    example_line_id = peewee.CharField(max_length=128)
    first_seen = peewee.DateTimeField(default=utcnow)
    last_seen = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_line_patterns"


class PatternLine(_Model):
    id = peewee.AutoField()
    pattern = peewee.ForeignKeyField(LinePattern, on_delete="CASCADE")
    line_id = peewee.CharField(max_length=128)

    class Meta:
        table_name = "ds_pattern_lines"
        indexes = ((("pattern", "line_id"), True),)


# The domain's models, parents before children.
_DOMAIN = (
    Import,
    Note,
    IngredientLine,
    Segment,
    Ingredient,
    LineIngredient,
    LinePattern,
    PatternLine,
)

#: The model of every table :func:`create_tables` makes: the domain's, bound to
#: :data:`database_proxy`, and the stores', bound to no database.
MODELS: tuple[type[peewee.Model], ...] = (
    *_DOMAIN,
    StatusEventRecord,
    Completion,
    CompletionItem,
    DeadLetter,
    AuditRecord,
)


@dataclass(frozen=True)
class DomainModels:
    """The domain's models bound to one database; see :func:`domain_models`."""

    Import: type[Import]
    Note: type[Note]
    IngredientLine: type[IngredientLine]
    Segment: type[Segment]
    Ingredient: type[Ingredient]
    LineIngredient: type[LineIngredient]
    LinePattern: type[LinePattern]
    PatternLine: type[PatternLine]


def domain_models(database: peewee.Database) -> DomainModels:
    """The domain's models bound to ``database``: made on first use, then the same.

    Queries built from them run on ``database`` whatever :data:`database_proxy`
    points at, from any thread.
    """
    return DomainModels(
        Import=bound_model(Import, database),
        Note=bound_model(Note, database),
        IngredientLine=bound_model(IngredientLine, database),
        Segment=bound_model(Segment, database),
        Ingredient=bound_model(Ingredient, database),
        LineIngredient=bound_model(LineIngredient, database),
        LinePattern=bound_model(LinePattern, database),
        PatternLine=bound_model(PatternLine, database),
    )


class DomainOperations(RunsOperations):
    """Base of the domain's operations: the models they use are bound to their database.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    @functools.cached_property
    def _models(self) -> DomainModels:
        return domain_models(self.database)

    @functools.cached_property
    def _statements(self) -> dict[CodeType, Statement]:
        return {}

    def _statement(self, build: Callable[[DomainModels], peewee.BaseQuery]) -> Statement:
        """The :class:`Statement` of the query ``build`` makes from the models; built once.

        One statement per place in the code (``build``'s code object), so ``build``
        must take everything it uses from the models and :func:`slot`: a value it
        closed over would be frozen into the SQL at its first call.

        Raises:
          ValueError: When ``build`` closes over a variable.
        """
        code = build.__code__
        found = self._statements.get(code)
        if found is None:
            if build.__closure__:
                raise ValueError(
                    f"{build.__qualname__}: a statement's query may use only the models"
                    f" and slot(), not {', '.join(code.co_freevars)}"
                )
            found = self._statements[code] = Statement(build(self._models))
        return found

    @property
    def _line_found(self) -> Statement:
        """The id of a parsed line, when it exists: what both halves of the operations ask."""
        return self._statement(
            lambda m: m.IngredientLine.select(m.IngredientLine.id).where(
                m.IngredientLine.id == slot("id")
            )
        )


def init_database(config: DatabaseConfig | str) -> peewee.Database:
    """Open the database ``config`` names and point :data:`database_proxy` at it.

    For code that uses the models declared here directly, with one database per
    process; the library's stores and operations need only the database
    (:func:`~dramatiq_shared.stores.connection.open_database` opens one and binds
    nothing).

    Parameters:
      config: A :class:`DatabaseConfig`, or a URL for one with default settings.

    Returns:
      The database; :func:`database_config` gives back the config it was opened with.

    Raises:
      ConfigError: When the URL or a setting is invalid.
    """
    database = open_database(config)
    database_proxy.initialize(database)
    return database


def create_tables(
    database: peewee.Database | None = None, *, extra: Sequence[type[peewee.Model]] = ()
) -> None:
    """Create every table and index that does not exist yet; safe to run again, and
    from several processes at once (worker processes booting beside ``init-db``).

    Parameters:
      database: The database to create them in; the one :data:`database_proxy`
        points at when omitted.
      extra: Models of your own, bound to ``database``, created with them.
    """
    target = database or database_proxy.obj
    with target.connection_context(), target.atomic():
        if isinstance(target, peewee.PostgresqlDatabase):
            # PostgreSQL's CREATE TABLE IF NOT EXISTS races with itself (a unique
            # violation in pg_type): one creator at a time, until this transaction ends.
            target.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))  # type: ignore[no-untyped-call]
        target.create_tables([*(bound_model(model, target) for model in MODELS), *extra], safe=True)


#: The advisory lock key ``create_tables`` takes on PostgreSQL ("dsct" in ASCII).
_CREATE_LOCK = 0x64736374
