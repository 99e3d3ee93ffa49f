"""Opening a database from a :class:`~dramatiq_shared.config.DatabaseConfig`.

* SQLite runs in WAL mode with a busy timeout, so worker threads can write at once;
  foreign keys are enforced.
* PostgreSQL goes through psycopg2 with a connection pool of
  ``DatabaseConfig.connection_limit`` connections per process.

Opening binds nothing: the stores and operations given the database bind their own
copies of the models to it (:func:`~dramatiq_shared.stores.tables.bound_model`).
"""

from __future__ import annotations

import weakref
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from ..config import DatabaseConfig

__all__ = ["database_config", "open_database"]

# The config each database was opened with, for the operations that run on it.
_configs: weakref.WeakKeyDictionary[peewee.Database, DatabaseConfig] = weakref.WeakKeyDictionary()

#: Seconds an idle pooled PostgreSQL connection is kept before it is reopened.
_STALE_TIMEOUT = 300


def open_database(config: DatabaseConfig | str) -> peewee.Database:
    """Open the database ``config`` names.

    Parameters:
      config: A :class:`DatabaseConfig`, or a URL for one with default settings.

    Returns:
      The database; :func:`database_config` gives back the config it was opened with.

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
    return database


def database_config(database: peewee.Database) -> DatabaseConfig:
    """The config ``database`` was opened with; defaults for one opened elsewhere."""
    return _configs.get(database) or DatabaseConfig()
