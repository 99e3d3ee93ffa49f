"""Peewee models of the recipe-import pipeline and the database they live in.

Every model is bound to :data:`database_proxy`; :func:`init_database` opens the
database a :class:`~dramatiq_shared.config.DatabaseConfig` (or URL) names and points
the proxy at it, so one process talks to one database.

* SQLite runs in WAL mode with a busy timeout, so worker threads can write at once;
  foreign keys are enforced.
* PostgreSQL goes through psycopg2 with a connection pool of
  ``DatabaseConfig.connection_limit`` connections per process.

Tables (all prefixed ``ds_`` so they sit beside an application's own):

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
import json
import weakref
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from ..config import DatabaseConfig
from ..status.events import NoteStatus

__all__ = [
    "MODELS",
    "Completion",
    "CompletionItem",
    "DeadLetter",
    "Import",
    "Ingredient",
    "LineIngredient",
    "LinePattern",
    "IngredientLine",
    "Note",
    "NoteStatus",
    "ParseStatus",
    "PatternLine",
    "Segment",
    "StatusEventRecord",
    "create_tables",
    "database_config",
    "database_proxy",
    "init_database",
    "utcnow",
]

#: The database every model uses; :func:`init_database` initialises it.
database_proxy = peewee.DatabaseProxy()

# The config each database was opened with, for the operations that run on it.
_configs: weakref.WeakKeyDictionary[peewee.Database, DatabaseConfig] = weakref.WeakKeyDictionary()

#: Seconds an idle pooled PostgreSQL connection is kept before it is reopened.
_STALE_TIMEOUT = 300


class ParseStatus(str, enum.Enum):
    """How parsing an ingredient line went."""

    PENDING = "PENDING"
    CORRECT = "CORRECT"
    INCORRECT = "INCORRECT"
    ERROR = "ERROR"


def utcnow() -> datetime:
    """The current UTC time, naive, as every timestamp column stores it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class JSONField(peewee.TextField):
    """JSON kept as text, the same on SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class _Model(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


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
    status = peewee.CharField(max_length=16, default=NoteStatus.PENDING.value)
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


class StatusEventRecord(_Model):
    id = peewee.AutoField()
    import_id = peewee.CharField(max_length=128)
    sequence = peewee.BigIntegerField()
    status = peewee.CharField(max_length=16)
    note_id = peewee.CharField(max_length=128, null=True)
    message = peewee.TextField(null=True)
    context = peewee.TextField(null=True)
    current_count = peewee.IntegerField(null=True)
    total_count = peewee.IntegerField(null=True)
    indent_level = peewee.SmallIntegerField(default=0)
    metadata = JSONField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "ds_status_events"
        indexes = ((("import_id", "sequence"), True),)


class Completion(_Model):
    import_id = peewee.CharField(max_length=128, primary_key=True)
    total = peewee.IntegerField()
    done = peewee.IntegerField(default=0)
    failed = peewee.IntegerField(default=0)
    finished = peewee.BooleanField(default=False)

    class Meta:
        table_name = "ds_completions"


class CompletionItem(_Model):
    completion = peewee.ForeignKeyField(Completion, column_name="import_id", on_delete="CASCADE")
    item_id = peewee.CharField(max_length=128)

    class Meta:
        table_name = "ds_completion_items"
        primary_key = peewee.CompositeKey("completion", "item_id")


class DeadLetter(_Model):
    id = peewee.AutoField()
    message_id = peewee.CharField(max_length=64, unique=True)
    queue_name = peewee.CharField(max_length=255)
    actor_name = peewee.CharField(max_length=255)
    message = JSONField()
    error_history = JSONField(default=list)
    error_type = peewee.CharField(max_length=255, default="")
    error_message = peewee.TextField(default="")
    reason = peewee.TextField(default="")
    failed_at = peewee.DateTimeField(default=utcnow)
    retried_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "ds_dead_letters"


#: Every model, parents before children, as create_tables() wants them.
MODELS: tuple[type[peewee.Model], ...] = (
    Import,
    Note,
    IngredientLine,
    Segment,
    Ingredient,
    LineIngredient,
    LinePattern,
    PatternLine,
    StatusEventRecord,
    Completion,
    CompletionItem,
    DeadLetter,
)


def init_database(config: DatabaseConfig | str) -> peewee.Database:
    """Open the database ``config`` names and bind every model to it.

    Parameters:
      config: A :class:`DatabaseConfig`, or a URL for one with default settings.

    Returns:
      The database, also reachable as ``database_proxy``; :func:`database_config`
      gives back the config it was opened with.

    Raises:
      ConfigError: When the URL or a setting is invalid.
    """
    if isinstance(config, str):
        config = DatabaseConfig(url=config)
    parts = urlsplit(config.url)
    database: peewee.Database
    if parts.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them.
        path = unquote(config.url[len("sqlite:///") :]) or ":memory:"
        database = peewee.SqliteDatabase(
            path,
            timeout=config.timeout / 1000,
            returning_clause=True,  # SQLite >= 3.35; tells an insert that did nothing
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": config.timeout,
                "foreign_keys": 1,
                "synchronous": "normal",
            },
        )
    else:
        database = PooledPostgresqlDatabase(
            unquote(parts.path.lstrip("/")),
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=parts.port,
            max_connections=config.connection_limit,
            stale_timeout=_STALE_TIMEOUT,
            timeout=config.timeout / 1000,
            connect_timeout=max(1, config.timeout // 1000),
        )
    _configs[database] = config
    database_proxy.initialize(database)
    return database


def database_config(database: peewee.Database) -> DatabaseConfig:
    """The config ``database`` was opened with; defaults for one opened elsewhere."""
    return _configs.get(database) or DatabaseConfig()


def create_tables(database: peewee.Database | None = None) -> None:
    """Create every table and index that does not exist yet; safe to run again.

    Parameters:
      database: The database to create them in; the one :func:`init_database`
        opened when omitted.
    """
    target = database or database_proxy.obj
    with target.bind_ctx(MODELS), target.connection_context():
        target.create_tables(MODELS, safe=True)
