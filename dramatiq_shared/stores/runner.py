"""Running database operations: a connection per operation, transient errors retried.

Every store (dead letters, status history, completion counts) and the domain's
operations run each public operation through :meth:`OperationRunner.run`, which

* on PostgreSQL borrows a pooled connection for the operation and gives it back,
  unless the caller already held one; on SQLite opens the thread's connection once
  and keeps it;
* retries the whole operation ``DatabaseConfig.retry_attempts`` times, with a short
  jittered backoff, when it failed on a transient error: a lost connection, a
  serialization failure, a deadlock, a lock timeout, SQLite's "database is locked";
* never retries inside a transaction the caller opened: that transaction is
  already lost, and only the caller can run it again. Inside one on PostgreSQL, each
  operation runs in a savepoint, so that a statement the database refuses (a
  constraint an operation then explains) leaves the caller's transaction usable.

:meth:`RunsOperations.unit_of_work` is such a transaction: many operations, of any
operations objects on the same database, committed together and retried together.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import peewee
import psycopg2
from loguru import logger

from ..config import DatabaseConfig
from ..metrics import DB_SECONDS
from .connection import database_config, open_database

__all__ = ["OperationRunner", "RunsOperations", "integrity_violation", "is_transient"]

_T = TypeVar("_T")

# SQLSTATE classes and codes worth another try: connection exceptions (08), serialization
# failure, deadlock, lock not available, and the server shutting down or starting up.
_TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})

#: First backoff in seconds; doubles per retry, capped at _MAX_BACKOFF, jittered.
_BASE_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


def _driver_error(error: BaseException) -> BaseException:
    # Peewee wraps driver errors, keeping the original as .orig; some (psycopg2's
    # SerializationFailure, say) it lets through unwrapped.
    original = getattr(error, "orig", None)
    return original if isinstance(original, BaseException) else error


def is_transient(error: BaseException) -> bool:
    """Tell whether ``error`` may well not happen again if the operation is retried."""
    original = _driver_error(error)
    code = getattr(original, "pgcode", None)
    if code:
        return code.startswith("08") or code in _TRANSIENT_CODES
    if isinstance(original, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True  # no SQLSTATE: the connection itself failed or was closed
    if isinstance(original, sqlite3.OperationalError):
        text = str(original)
        return "locked" in text or "busy" in text
    return False


def integrity_violation(error: BaseException) -> str | None:
    """Name the kind of constraint ``error`` violated: ``"unique"``, ``"foreign_key"`` or None."""
    original = _driver_error(error)
    code = getattr(original, "pgcode", None)
    if code == "23505" or "UNIQUE constraint failed" in str(original):
        return "unique"
    if code == "23503" or "FOREIGN KEY constraint failed" in str(original):
        return "foreign_key"
    return None


class OperationRunner:
    """Runs operations on one database with connection handling and transient retries.

    Parameters:
      database: A database, a :class:`DatabaseConfig`, or a URL; the latter two are
        opened with :func:`~dramatiq_shared.stores.connection.open_database`.
      config: Settings to use with a database object; defaults to those it was
        opened with.
    """

    def __init__(
        self,
        database: peewee.Database | DatabaseConfig | str,
        *,
        config: DatabaseConfig | None = None,
    ) -> None:
        if isinstance(database, (DatabaseConfig, str)):
            database = open_database(database)
        self.database: peewee.Database = database
        self.config = config or database_config(database)
        self.is_sqlite = isinstance(database, peewee.SqliteDatabase)

    def run(self, operation: Callable[[], _T]) -> _T:
        """Run ``operation`` with a connection, retrying it on transient errors.

        Returns:
          What ``operation`` returned.

        Raises:
          Exception: What the last attempt raised, when it was not transient, the
            retries ran out, or the caller's own transaction was open.
        """
        # Named after the public method that ran it, by the class of the object it was
        # called on (DatabaseOperations.create_or_update_note, say): the class that
        # defines the method is a detail of the package's layout.
        caller = sys._getframe(1)
        owner = caller.f_locals.get("self")
        name = caller.f_code.co_name
        if owner is not None:
            name = f"{type(owner).__name__}.{name}"
        with DB_SECONDS.labels(name).time():
            return self._run(operation)

    def _run(self, operation: Callable[[], _T]) -> _T:
        retries = 0
        while True:
            try:
                with self._connection():
                    # On PostgreSQL a refused statement aborts the whole transaction;
                    # SQLite undoes just the statement, and a savepoint costs CPU.
                    if not self.is_sqlite and self.database.in_transaction():
                        with self.database.atomic():  # a savepoint, the caller's to keep
                            return operation()
                    return operation()
            except Exception as error:
                if (
                    retries >= self.config.retry_attempts
                    or self.database.in_transaction()
                    or not is_transient(error)
                ):
                    raise
                retries += 1
                delay = random.uniform(0, min(_MAX_BACKOFF, _BASE_BACKOFF * 2**retries))
                logger.warning(
                    "Transient database error, retry {} of {} in {:.0f} ms: {}: {}",
                    retries,
                    self.config.retry_attempts,
                    delay * 1000,
                    type(error).__name__,
                    error,
                )
                self._discard_connection()
                time.sleep(delay)

    def transaction(self) -> Any:
        """A transaction for writes; on SQLite it takes the write lock at BEGIN.

        A deferred SQLite transaction that reads before it writes fails at once with
        "database is locked" when another writer got there first; IMMEDIATE waits for
        the busy timeout instead.
        """
        return self.database.atomic("IMMEDIATE") if self.is_sqlite else self.database.atomic()

    @contextmanager
    def _connection(self) -> Iterator[None]:
        if not self.database.is_closed():
            yield  # the caller's connection (and maybe transaction): leave it to them
            return
        self.database.connect()
        if self.is_sqlite:
            # A SQLite connection runs its pragmas whenever it opens, which costs more
            # than most operations; there is no pool to give it back to, and an idle
            # connection holds no lock in WAL mode, so the thread keeps it.
            yield
            return
        try:
            yield
        finally:
            self.database.close()

    def _discard_connection(self) -> None:
        # Reached only outside a transaction. A pooled connection that failed must not
        # go back to the pool, so it is closed outright.
        if self.database.is_closed():
            return
        try:
            if hasattr(self.database, "manual_close"):
                self.database.manual_close()
            else:
                self.database.close()
        except Exception as error:  # the connection is already broken; nothing to save
            logger.debug("Closing a failed connection raised {}: {}", type(error).__name__, error)


class RunsOperations:
    """Base of the classes whose every operation goes through an :class:`OperationRunner`.

    Parameters:
      database: A database, a :class:`DatabaseConfig`, or a URL, as for
        :class:`OperationRunner`. The subclass binds its models to it.
      config: Settings (``batch_size``, ``retry_attempts``) to use with a database
        object; by default those it was opened with.
    """

    def __init__(
        self,
        database: peewee.Database | DatabaseConfig | str,
        *,
        config: DatabaseConfig | None = None,
    ) -> None:
        self._runner = OperationRunner(database, config=config)

    @property
    def database(self) -> peewee.Database:
        """The database the operations run on."""
        return self._runner.database

    def unit_of_work(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` in one transaction, retried whole on a transient error.

        ``work`` calls operations, of this object or of any other on the same database
        (a :class:`~dramatiq_shared.db.PatternTracker` beside the
        :class:`~dramatiq_shared.db.DatabaseOperations`, say): all their writes are
        committed together, or none is. That is one transaction (on SQLite, one turn of
        its single write lock) where each operation would take its own. Since ``work``
        may run again, it should only write through operations, and leave what must
        follow a commit (sending a message about a row it made, say) to its caller.

        Parameters:
          work: What to run; it takes no arguments.

        Returns:
          What ``work`` returned.

        Raises:
          Exception: What ``work`` raised, when it was not transient or the retries ran
            out; nothing it wrote is kept.
        """
        runner = self._runner

        def transaction() -> _T:
            with runner.transaction():
                return work()

        return runner.run(transaction)

    @property
    def config(self) -> DatabaseConfig:
        """The settings they run with."""
        return self._runner.config
