"""Dead letters: messages that failed for good, kept with their whole error history.

The :class:`~dramatiq_shared.middleware.ErrorHandling` middleware records one row per
message id (a message dead-lettered again after a retry updates its row; a record
written again, or late, changes nothing a newer failure wrote), and the
``dramatiq-shared dead-letters`` command lists, shows, retries and purges them.
"""

from __future__ import annotations

import builtins
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import dramatiq
import peewee
from dramatiq.common import q_name

from .._checks import check_int
from ..errors import ConfigError, ValidationError
from .audit import AuditLog
from .bulk import insert_rows, upsert_clause
from .runner import RunsOperations
from .tables import JSONField, Table, bound_model, utcnow

__all__ = [
    "FILTER_KEYS",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterRecord",
    "DeadLetterStore",
    "Replay",
    "fresh_message",
]

#: Options a retried dead letter starts without: the counters of its earlier attempts
#: and the broker's bookkeeping. Its error history is kept.
_RESET_OPTIONS = (
    "retries",
    "retry_delay",
    "retry_decision",
    "defers",
    "eta",
    "redis_message_id",
    "traceback",
    "requeue_timestamp",
)


class DeadLetter(Table):
    """A row of ``ds_dead_letters``, one per message id."""

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


#: The columns a dead letter is written with, in the order of its row.
_COLUMNS = (
    "message_id",
    "queue_name",
    "actor_name",
    "message",
    "error_history",
    "error_type",
    "error_message",
    "reason",
    "failed_at",
    "retried_at",
)
#: Those a message dead-lettered again overwrites, besides ``failed_at``.
_UPDATED = tuple(name for name in _COLUMNS if name not in ("message_id", "failed_at"))


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead letter as stored."""

    id: int
    message_id: str
    queue_name: str
    actor_name: str
    message: dict[str, Any]
    error_history: list[dict[str, Any]]
    error_type: str
    error_message: str
    reason: str
    failed_at: datetime
    retried_at: datetime | None


#: The keys of a filter, as ``--filter KEY=VALUE`` and the relay's query take them.
FILTER_KEYS = ("actor", "queue", "error_type", "import_id", "since", "until", "text")


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: every given field must match (none given: all of them).

    Parameters:
      actor: The actor's name, exactly.
      queue: The queue's name, exactly.
      error_type: The last error's qualified name, exactly (``builtins.ValueError``),
        or its last part (``ValueError``).
      import_id: An import id the message carries: its JSON holds it as a string
        (matched ignoring case).
      since: Failed at or after (naive UTC).
      until: Failed before (naive UTC).
      text: Words in the error message or the message, case-insensitively on
        PostgreSQL (SQLite: ASCII letters only).
      include_retried: Those retried already too. Default False.
    """

    actor: str | None = None
    queue: str | None = None
    error_type: str | None = None
    import_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    include_retried: bool = False

    @classmethod
    def parse(cls, pairs: Mapping[str, str], *, include_retried: bool = False) -> DeadLetterFilter:
        """A filter from text values by :data:`FILTER_KEYS` (times ISO 8601, UTC).

        Raises:
          ValidationError: Naming an unknown key or a time that is not ISO 8601.
        """
        values: dict[str, Any] = {}
        for key, value in pairs.items():
            if key not in FILTER_KEYS:
                raise ValidationError(
                    f"filter: no key {key!r}; allowed: {', '.join(FILTER_KEYS)}", field=key
                )
            if value == "":
                continue
            if key in ("since", "until"):
                try:
                    moment = datetime.fromisoformat(value.removesuffix("Z"))
                except ValueError:
                    raise ValidationError.invalid(key, value, "an ISO 8601 time") from None
                values[key] = moment.replace(tzinfo=None)
            else:
                values[key] = value
        return cls(**values, include_retried=include_retried)

    def described(self) -> dict[str, Any]:
        """The fields given, JSON-ready (for the audit and for answers)."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}
        return {
            k: f"{v:%Y-%m-%dT%H:%M:%S}Z" if isinstance(v, datetime) else v for k, v in given.items()
        }


@dataclass(frozen=True)
class Replay:
    """What a replay did: how many matched, how many it enqueued (0 on a dry run)."""

    matched: int
    enqueued: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fresh_message(stored: Mapping[str, Any]) -> dramatiq.Message[Any]:
    """The message of a dead letter, ready to run again with a fresh attempt count."""
    options = {k: v for k, v in stored.get("options", {}).items() if k not in _RESET_OPTIONS}
    return dramatiq.Message(
        queue_name=q_name(stored["queue_name"]),
        actor_name=stored["actor_name"],
        args=tuple(stored.get("args", ())),
        kwargs=dict(stored.get("kwargs", {})),
        options=options,
        message_id=stored["message_id"],
        message_timestamp=stored.get("message_timestamp", 0),
    )


class DeadLetterStore(RunsOperations):
    """Reads and writes the dead-letters table.

    Takes the arguments of :class:`~dramatiq_shared.stores.runner.RunsOperations`.
    """

    @functools.cached_property
    def _table(self) -> type[DeadLetter]:
        return bound_model(DeadLetter, self.database)

    def ensure_table(self) -> None:
        """Make sure the table exists: created on SQLite when missing; on PostgreSQL, whose
        tables ``dramatiq-shared init-db`` makes, a database without it is refused.

        Raises:
          ConfigError: On PostgreSQL, when the table does not exist.
        """
        table = self._table
        if self._runner.is_sqlite:
            self._runner.run(lambda: table.create_table(safe=True))
        elif not self._runner.run(table.table_exists):
            name = getattr(self.database, "database", "")
            raise ConfigError(
                f"the dead-letters table {table._meta.table_name} does not exist in the"
                f" PostgreSQL database {name!r}: create it with"
                " `dramatiq-shared init-db --database URL` before starting a worker"
            )

    def record(
        self,
        message: Mapping[str, Any],
        *,
        error_type: str,
        error_message: str,
        reason: str,
        failed_at: datetime | None = None,
    ) -> None:
        """Record a message that failed for good; a message id seen before is updated.

        Writing the same record again leaves its one row as it was, and a record older
        than the row (``failed_at``) changes nothing, so a record kept through an outage
        and written late cannot undo a newer failure of the same message.

        Parameters:
          message: The message as ``Message.asdict()`` gives it, options included.
          error_type: The qualified name of the last error.
          error_message: Its message.
          reason: Why it will not be retried.
          failed_at: When it failed (naive UTC); default now.
        """
        table = self._table
        options = message.get("options", {})
        row = (
            message["message_id"],
            q_name(message["queue_name"]),
            message["actor_name"],
            table.message.db_value(dict(message)),
            table.error_history.db_value(list(options.get("error_history", []))),
            error_type[:255],
            error_message[:10_000],
            reason[:1_000],
            failed_at or utcnow(),
            None,
        )
        # One prepared statement rather than a peewee query built per dead letter: on a
        # failing workload, building the query was a third of the failure path's CPU.
        self._runner.run(
            lambda: insert_rows(table, _COLUMNS, [row], batch_size=1, suffix=self._upsert)
        )

    @functools.cached_property
    def _upsert(self) -> str:
        # A message dead-lettered again (after a retry) takes the new row whole, unless
        # the row already holds a later failure.
        return upsert_clause(
            self._table, "message_id", _UPDATED, "failed_at", only_changed=False, keep_later=True
        )

    def list(self, *, limit: int = 100, include_retried: bool = False) -> list[DeadLetterRecord]:
        """The newest dead letters first, at most ``limit``; retried ones only when asked."""
        check_int("limit", limit, minimum=1)
        table = self._table

        def read() -> list[DeadLetterRecord]:
            query = table.select().order_by(table.failed_at.desc(), table.id.desc())
            if not include_retried:
                query = query.where(table.retried_at.is_null())
            return [_record(row) for row in query.limit(limit)]

        return self._runner.run(read)

    def get(self, dead_letter_id: int) -> DeadLetterRecord:
        """One dead letter.

        Raises:
          ValidationError: When there is none with that id.
        """
        check_int("id", dead_letter_id, minimum=1)
        table = self._table
        row = self._runner.run(lambda: table.get_or_none(table.id == dead_letter_id))
        if row is None:
            raise ValidationError(f"id: no dead letter {dead_letter_id}", field="id")
        return _record(row)

    def retry(self, dead_letter_id: int, broker: dramatiq.Broker) -> bool:
        """Enqueue a dead letter's message again with a fresh attempt count, once.

        The row is claimed (``retried_at`` set) in the transaction that enqueues, so a
        dead letter retried twice, even by two commands at once, is enqueued once; if the
        enqueue fails, the claim is rolled back.

        Returns:
          True when this call enqueued it; False when it had been retried already.

        Raises:
          ValidationError: When there is no dead letter with that id, or it holds no
            message to run (its body could not be decoded).
        """
        stored = self.get(dead_letter_id)
        if not stored.actor_name:
            raise ValidationError(
                f"id: dead letter {dead_letter_id} cannot be retried: its body could not be"
                " decoded as a message, so there is nothing to enqueue",
                field="id",
            )

        table = self._table

        def claim_and_enqueue() -> bool:
            with self._runner.transaction():
                claimed = (
                    table.update(retried_at=utcnow())
                    .where(table.id == dead_letter_id, table.retried_at.is_null())
                    .execute()
                )
                if not claimed:
                    return False
                message = fresh_message(stored.message)
                broker.declare_queue(message.queue_name)
                broker.enqueue(message)
                return True

        return self._runner.run(claim_and_enqueue)

    def _where(self, matching: DeadLetterFilter) -> Any:
        """The condition of ``matching`` on the table (True for an empty filter)."""
        table = self._table
        conditions: list[Any] = []
        if not matching.include_retried:
            conditions.append(table.retried_at.is_null())
        if matching.actor:
            conditions.append(table.actor_name == matching.actor)
        if matching.queue:
            conditions.append(table.queue_name == q_name(matching.queue))
        if matching.error_type:
            conditions.append(
                (table.error_type == matching.error_type)
                | table.error_type.endswith(f".{matching.error_type}")
            )
        if matching.import_id:
            # The JSON of the message, written without spaces, holds it as a string.
            conditions.append(_like(table.message, f'%"{matching.import_id}"%'))
        if matching.since:
            conditions.append(table.failed_at >= matching.since)
        if matching.until:
            conditions.append(table.failed_at < matching.until)
        if matching.text:
            words = f"%{matching.text}%"
            conditions.append(_like(table.error_message, words) | _like(table.message, words))
        return functools.reduce(lambda a, b: a & b, conditions, peewee.Value(1) == 1)

    def search(
        self, matching: DeadLetterFilter, *, limit: int = 100, offset: int = 0
    ) -> builtins.list[DeadLetterRecord]:
        """The dead letters ``matching``, newest first: at most ``limit``, after ``offset``."""
        check_int("limit", limit, minimum=1)
        check_int("offset", offset, minimum=0)
        table = self._table
        query = (
            table.select()
            .where(self._where(matching))
            .order_by(table.failed_at.desc(), table.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return self._runner.run(lambda: [_record(row) for row in query])

    def count(self, matching: DeadLetterFilter) -> int:
        """How many dead letters match."""
        table = self._table
        return int(self._runner.run(table.select().where(self._where(matching)).count))

    def replay(
        self,
        broker: dramatiq.Broker | None,
        *,
        ids: Sequence[int] = (),
        matching: DeadLetterFilter | None = None,
        rate: float | None = None,
        dry_run: bool = False,
        audit: AuditLog | None = None,
        who: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> Replay:
        """Retry dead letters by id or by filter, each once (see :meth:`retry`), at most
        ``rate`` a second; a dry run only counts those it would retry. What the
        ``dramatiq-shared dead-letters retry`` command and the relay both call.

        Parameters:
          broker: Where their messages are enqueued; None for a dry run only.
          ids: These dead letters (not yet retried ones only)...
          matching: ...or those matching the filter (not both).
          rate: Messages a second at most; default unlimited.
          dry_run: Count, enqueue nothing.
          audit: Where a replay (not a dry run) is recorded, before its first enqueue:
            ``who``, the filter or the ids, the rate, and how many matched.
          who: Who replays, for the audit.
          sleep: How to wait between messages (for tests).

        Raises:
          ValidationError: Without ids or a filter, with both, or with a rate <= 0.
        """
        if bool(ids) == (matching is not None):
            raise ValidationError("replay needs ids or a filter, not both", field="ids")
        if rate is not None and not rate > 0:
            raise ValidationError.invalid("rate", rate, "a number of messages a second > 0")
        if broker is None and not dry_run:
            raise ValidationError("replay needs a broker to enqueue on", field="broker")
        table = self._table
        if ids:
            for n, dead_letter_id in enumerate(ids):
                check_int(f"ids[{n}]", dead_letter_id, minimum=1)
            where = (table.id.in_(list(ids))) & table.retried_at.is_null()
        else:
            assert matching is not None
            where = self._where(matching)
        query = table.select(table.id).where(where).order_by(table.id)
        chosen = self._runner.run(lambda: [row.id for row in query])
        if dry_run:
            return Replay(len(chosen), 0, dry_run=True)
        if audit is not None:
            described = matching.described() if matching is not None else {"ids": list(ids)}
            audit.record(
                who=who,
                action="dead_letters.retry",
                target=", ".join(f"{k}={v}" for k, v in described.items()) or "every dead letter",
                details={"filter": described, "rate": rate},
                count=len(chosen),
            )
        assert broker is not None
        enqueued = 0
        started = time.monotonic()
        for n, dead_letter_id in enumerate(chosen):
            if rate is not None:
                # Paced from the start, so a slow enqueue does not slow the rate further.
                wait = started + n / rate - time.monotonic()
                if wait > 0:
                    sleep(wait)
            enqueued += self.retry(dead_letter_id, broker)
        return Replay(len(chosen), enqueued, dry_run=False)

    def purge(
        self,
        *,
        ids: Sequence[int] = (),
        retried: bool = False,
        everything: bool = False,
        matching: DeadLetterFilter | None = None,
        older_than: timedelta | None = None,
    ) -> int:
        """Delete dead letters: by id, those already retried, those matching a filter
        (``older_than``: and failed longer ago than that), or all of them.

        Returns:
          How many rows were deleted.

        Raises:
          ValidationError: When none of ``ids``, ``retried``, ``matching``,
            ``older_than`` and ``everything`` is given.
        """
        for n, dead_letter_id in enumerate(ids):
            check_int(f"ids[{n}]", dead_letter_id, minimum=1)
        if not (ids or retried or everything or matching or older_than):
            raise ValidationError(
                "purge needs ids, retried=True, a filter, an age or everything=True", field="ids"
            )
        table = self._table
        query = table.delete()
        if not everything:
            condition = table.id.in_(list(ids))
            if retried:
                condition |= table.retried_at.is_null(False)
            if matching is not None or older_than is not None:
                chosen = self._where(matching or DeadLetterFilter(include_retried=True))
                if older_than is not None:
                    chosen &= table.failed_at < utcnow() - older_than
                condition |= chosen
            query = query.where(condition)
        return int(self._runner.run(query.execute))


def _like(column: Any, pattern: str) -> Any:
    """``column ILIKE pattern`` (SQLite: LIKE; peewee's LIKE there is GLOB) on the
    column's text as stored: the pattern skips the column's conversion, which would
    quote it as JSON."""
    return peewee.Expression(column, peewee.OP.ILIKE, peewee.Value(pattern, converter=False))


def _record(row: DeadLetter) -> DeadLetterRecord:
    return DeadLetterRecord(
        id=row.id,
        message_id=row.message_id,
        queue_name=row.queue_name,
        actor_name=row.actor_name,
        message=row.message,
        error_history=row.error_history,
        error_type=row.error_type,
        error_message=row.error_message,
        reason=row.reason,
        failed_at=row.failed_at,
        retried_at=row.retried_at,
    )
