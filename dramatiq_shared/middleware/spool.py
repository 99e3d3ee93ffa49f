"""Dead letters the database has not taken yet, kept until it does.

:class:`~dramatiq_shared.middleware.ErrorHandling` writes a dead letter to the table
on the worker thread, as the broker dead-letters the message. When that write fails
for any reason but bad data (the database down, a lost connection, a missing table),
the record is kept here and a background thread writes it once the database takes it:

* in Redis, when there is a client: a hash (:attr:`~dramatiq_shared.keys.Keys.dead_letters`)
  of message id to record, shared by every worker process, so what one process could
  not write outlives it and any live worker writes it (each looks every 10 s). A record
  leaves the hash only once written, and only if no newer record of the message took
  its place meanwhile (a compare-and-delete script); a crash in between costs a second
  write, which leaves the same one row (:meth:`DeadLetterStore.record`);
* in this process's memory when there is no client, or while Redis refuses too: at
  most 10,000 records (beyond, the oldest are dropped and logged). No file: without
  Redis the broker is RabbitMQ, whose dead-letter queue keeps the message for good
  (the table holds a copy), or the embedded StubBroker, whose dead letters live in
  this process's memory anyway and whose SQLite file refuses writes for the reasons
  a spool file on the same disk would (full, read-only). A worker that shuts down
  with records still in memory tries them once more, moves them to Redis if it can,
  and logs how many are left and their message ids (the broker's dead-letter queue
  holds those messages).

While records are kept, new dead letters go straight here, so an outage costs the
worker thread one failed write, not one a message. The thread tries again after 1 s,
doubling up to 30 s. A failure is logged when an outage starts and then once a minute
at most; the recovery, with how many were written. Nothing here raises into a hook.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

import dramatiq
import peewee
import redis
from dramatiq.brokers.redis import RedisBroker
from loguru import logger

from ..errors import ConfigError, DramatiqSharedError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..stores.dead_letters import DeadLetterStore
from ..stores.tables import utcnow

__all__ = ["DeadLetterEntry", "DeadLetterSpool"]

#: Most records kept in memory.
MEMORY_LIMIT = 10_000
#: Seconds between two looks at Redis for records other processes left.
POLL_INTERVAL = 10.0
#: Longest wait, in seconds, between two tries while the database refuses.
MAX_BACKOFF = 30.0
#: Seconds between two log records of one outage.
LOG_INTERVAL = 60.0

# Deletes each (field, value) pair of ARGV whose field still holds that value.
_DELETE_WRITTEN = """
local deleted = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return deleted
"""


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter as :meth:`DeadLetterStore.record` takes it."""

    message: dict[str, Any]
    error_type: str
    error_message: str
    reason: str
    failed_at: datetime

    @property
    def message_id(self) -> str:
        return str(self.message["message_id"])

    def encode(self) -> str:
        return json.dumps({**asdict(self), "failed_at": self.failed_at.isoformat()})

    @classmethod
    def decode(cls, raw: bytes | str) -> DeadLetterEntry:
        fields = json.loads(raw)
        return cls(**{**fields, "failed_at": datetime.fromisoformat(fields["failed_at"])})


class _RefusedError(DramatiqSharedError):
    """The database (or Redis, reading the spool) refused: try again later."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")


def _bad_data(error: BaseException) -> bool:
    """Whether the database refused the record itself, so no later try can help."""
    if isinstance(error, ConfigError):
        return False
    return isinstance(error, (peewee.IntegrityError, peewee.DataError, TypeError, ValueError))


class DeadLetterSpool:
    """Writes dead letters, keeping those the database refuses until it takes them.

    Parameters:
      store: Where they are written.
      redis_client: Where refused records are kept, shared by every process; None
        keeps them in this process's memory.
      namespace: Prefix of the Redis key. Default ``"dramatiq_shared"``.
    """

    def __init__(
        self,
        store: DeadLetterStore,
        *,
        redis_client: redis.Redis | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.store = store
        self.client = redis_client
        self.key = Keys(namespace).dead_letters
        self._memory: OrderedDict[str, DeadLetterEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._table_ready = False
        self._kept = False  # records wait: new ones go straight to the spool
        self._backoff = 0.0
        self._logged_at = -math.inf  # the outage's last log record; -inf: none logged
        self._delete: Any = None  # the compare-and-delete script, registered on first use
        self._redis_retry_at = 0.0  # monotonic: no Redis from a worker thread before then

    def open(self, broker: dramatiq.Broker | None = None) -> None:
        """Check the table once (created on SQLite) and start the background thread.

        Parameters:
          broker: The worker's broker: a RedisBroker's client keeps the records when
            the spool was given none.

        Raises:
          ConfigError: On PostgreSQL, when the table does not exist.
        """
        if self.client is None and isinstance(broker, RedisBroker):
            self.client = broker.client
        try:
            self.store.ensure_table()
            self._table_ready = True
        except ConfigError:
            raise
        except Exception as error:  # the database is down: the spool's case
            self._log_outage(error)
        self._start()
        self._wake.set()  # at once: what another process left in Redis, say

    def __len__(self) -> int:
        """How many dead letters are kept in this process's memory."""
        with self._lock:
            return len(self._memory)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, try what is kept once more, and log what is left and where.

        Parameters:
          timeout: Seconds to wait for the thread; one still waiting for the database
            after that is left to it (a daemon), and no last try is made.
        """
        self._stop.set()
        self._wake.set()
        busy = False
        if self._thread is not None:
            self._thread.join(timeout)
            busy = self._thread.is_alive()
        if not self._kept:
            return
        if not busy:
            self.drain()
        self._move_to_redis()
        with self._lock:
            left = list(self._memory)
        if left:
            logger.error(
                "{} dead letters never reached the dead-letters table and are lost with this"
                " process; the broker's dead-letter queue still holds their messages: {}",
                len(left),
                ", ".join(left),
            )
        waiting = self._redis_count()
        if waiting:
            logger.warning(
                "{} dead letters wait in Redis ({}) for a worker to write them to the table",
                waiting,
                self.key,
            )

    def bury(
        self, message: Mapping[str, Any], *, error_type: str, error_message: str, reason: str
    ) -> None:
        """Write a dead letter now, or keep it for the background thread. Never raises.

        Parameters:
          message: The message as ``Message.asdict()`` gives it, options included.
          error_type: The qualified name of the last error.
          error_message: Its message.
          reason: Why it will not be retried.
        """
        entry = DeadLetterEntry(dict(message), error_type, error_message, reason, utcnow())
        refusal = None
        if not self._kept:
            try:
                self._write(entry)
                return
            except Exception as error:
                if _bad_data(error):
                    _refused(entry, error)
                    return
                refusal = error
        self._keep([entry])
        if refusal is not None:
            self._log_outage(refusal)
        self._start()
        self._wake.set()

    def drain(self) -> bool:
        """Write what is kept, in memory then in Redis; back off at the first refusal.

        Returns:
          True when nothing is left.
        """
        written = 0
        try:
            if not self._table_ready:
                self.store.ensure_table()
                self._table_ready = True
            written += self._drain_memory()
            written += self._drain_redis()
        except Exception as error:
            self._backoff = min(max(1.0, 2 * self._backoff), MAX_BACKOFF)
            self._log_outage(error)
            self._move_to_redis()
            return False
        if written and self._logged_at > -math.inf:
            logger.info("The database takes dead letters again: wrote {} kept ones", written)
        self._backoff = 0.0
        self._logged_at = -math.inf
        with self._lock:
            self._kept = bool(self._memory)
        return True

    def _write(self, entry: DeadLetterEntry) -> None:
        self.store.record(
            entry.message,
            error_type=entry.error_type,
            error_message=entry.error_message,
            reason=entry.reason,
            failed_at=entry.failed_at,
        )

    def _try(self, entry: DeadLetterEntry) -> bool:
        """Write ``entry``: True once written, False for bad data (logged, dropped).

        Raises:
          _RefusedError: When the database refused it for another reason.
        """
        try:
            self._write(entry)
        except Exception as error:
            if not _bad_data(error):
                raise _RefusedError(error) from error
            _refused(entry, error)
            return False
        return True

    def _keep(self, entries: list[DeadLetterEntry]) -> None:
        self._kept = True
        refusal = None
        # After a refusal the worker threads leave Redis to the background thread for a
        # while: a client's retries on a dead server cost seconds a call.
        if self.client is not None and time.monotonic() >= self._redis_retry_at:
            try:
                self.client.hset(self.key, mapping={e.message_id: e.encode() for e in entries})
                return
            except (redis.RedisError, TypeError, ValueError) as error:
                self._redis_retry_at = time.monotonic() + POLL_INTERVAL
                refusal = error
        with self._lock:
            for entry in entries:
                self._memory[entry.message_id] = entry
                self._memory.move_to_end(entry.message_id)
            dropped = []
            while len(self._memory) > MEMORY_LIMIT:
                dropped.append(self._memory.popitem(last=False)[0])
        if refusal is not None:
            self._log_outage(refusal, where="memory (Redis refused them too)")
        if dropped:
            logger.error(
                "Dropped the {} oldest kept dead letters (more than {:,} wait); the broker's"
                " dead-letter queue still holds their messages: {}",
                len(dropped),
                MEMORY_LIMIT,
                ", ".join(dropped),
            )

    def _drain_memory(self) -> int:
        with self._lock:
            entries = list(self._memory.values())
        written = 0
        for entry in entries:
            written += self._try(entry)
            self._forget([entry])
        return written

    def _forget(self, entries: Iterable[DeadLetterEntry]) -> None:
        with self._lock:
            for entry in entries:
                if self._memory.get(entry.message_id) is entry:  # not replaced meanwhile
                    del self._memory[entry.message_id]

    def _drain_redis(self) -> int:
        if self.client is None:
            return 0
        if self._delete is None:
            self._delete = self.client.register_script(_DELETE_WRITTEN)
        delete = self._delete
        written, cursor = 0, 0
        while True:
            cursor, found = self.client.hscan(self.key, cursor, count=100)
            done: list[Any] = []
            try:
                for field, raw in cast("dict[bytes, bytes]", found).items():
                    try:
                        entry = DeadLetterEntry.decode(raw)
                    except (ValueError, KeyError, TypeError) as error:
                        logger.error("Dropping an unreadable kept dead letter {}: {}", field, error)
                    else:
                        written += self._try(entry)
                    done += (field, raw)
            finally:
                if done:  # a failure here only costs writing them again
                    delete(keys=[self.key], args=done)
            if cursor == 0:
                return written

    def _move_to_redis(self) -> None:
        """Put what memory holds where it outlives the process, when Redis takes it."""
        with self._lock:
            entries = list(self._memory.values())
        if self.client is None or not entries:
            return
        try:
            self.client.hset(self.key, mapping={e.message_id: e.encode() for e in entries})
        except (redis.RedisError, TypeError, ValueError):
            return  # still in memory; the outage is being logged
        self._forget(entries)

    def _redis_count(self) -> int:
        if self.client is None:
            return 0
        try:
            return int(self.client.hlen(self.key))
        except redis.RedisError:
            return 0

    def _log_outage(self, error: BaseException, where: str | None = None) -> None:
        now = time.monotonic()
        if now - self._logged_at < LOG_INTERVAL:
            return
        self._logged_at = now
        with self._lock:
            in_memory = len(self._memory)
        cause = error.__cause__ if isinstance(error, _RefusedError) and error.__cause__ else error
        logger.warning(
            "Dead letters are kept in {} until the table takes them ({} in memory, {} in"
            " Redis): {}: {}",
            where or ("Redis" if self.client is not None else "memory"),
            in_memory,
            self._redis_count() if where is None else "?",
            type(cause).__name__,
            " ".join(str(cause).split()),
        )

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._backoff:  # refused: wait it out, whatever is added meanwhile
                if self._stop.wait(self._backoff):
                    return
            else:
                self._wake.wait(POLL_INTERVAL if self.client is not None else None)
                self._wake.clear()
                if self._stop.is_set():
                    return
            try:
                self.drain()
            except Exception as error:  # a bug must not end the thread that keeps them
                logger.opt(exception=error).error("Writing kept dead letters failed")


def _refused(entry: DeadLetterEntry, error: BaseException) -> None:
    # Retrying bad data cannot help; the broker's dead-letter queue keeps the message.
    logger.opt(exception=error).error(
        "The dead-letters table refused dead letter {}: {}", entry.message_id, error
    )
