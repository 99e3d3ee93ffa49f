"""Import completion: exactly one COMPLETED or FAILED per import, however many workers.

An import expects N items (notes, say). Each worker marks the items it finished;
:class:`CompletionTracker` counts each item once however often its message is
redelivered, publishes the import's progress (``current_count`` of ``total_count``,
context ``"import"``), and when the last item is in publishes exactly one terminal
event: COMPLETED, or FAILED with ``metadata.failed`` items failed. The count and the
"finished" flag change atomically, in Redis (a Lua script) or in the database (a
locked row), so two processes finishing the last two items at once cannot both see
themselves last.

In Redis, an import's counts (a hash: total, done, failed, finished) and the set of
its items counted so far expire 7 days after the last change; the names of their keys
are in :mod:`dramatiq_shared.keys`.

Completion is a side concern of the message that marks an item: a mark for an import
nobody expected (or one past its total) is not an error of that message. The tracker
logs it once per import, as a WARNING naming :meth:`CompletionTracker.expect`, counts
nothing, and the message's own outcome stands.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import peewee
import redis
from loguru import logger

from .._checks import INT32_MAX, check_id, check_int
from ..errors import ConfigError, ValidationError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..stores.completions import CompletionCounts
from .broadcaster import Broadcaster
from .events import NoteStatus, StatusEvent

__all__ = ["CompletionTracker", "Progress"]

#: Seconds the Redis keys of an import live after its last change.
_TTL = 7 * 24 * 3600
#: The context of the import-level events.
CONTEXT = "import"
#: Imports whose refused marks a tracker remembers having logged (the oldest forgotten).
_REMEMBERED = 1_024

# KEYS: hash, items. ARGV: item, ok (1/0), ttl. Returns {outcome, done, total, failed,
# finished} with outcome 1 counted, 0 seen before, -1 not expected, -2 beyond the total.
_MARK = """
local total = redis.call('HGET', KEYS[1], 'total')
if not total then return {-1, 0, 0, 0, 0} end
total = tonumber(total)
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {0, done, total, failed, 0} end
if done >= total then return {-2, done, total, failed, 0} end
redis.call('SADD', KEYS[2], ARGV[1])
done = redis.call('HINCRBY', KEYS[1], 'done', 1)
if ARGV[2] == '0' then failed = redis.call('HINCRBY', KEYS[1], 'failed', 1) end
local finished = 0
if done == total and redis.call('HSETNX', KEYS[1], 'finished', 1) == 1 then finished = 1 end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, done, total, failed, finished}
"""

# KEYS: hash. ARGV: total, ttl. Returns {total stored, finished now (1/0)}.
_EXPECT = """
if redis.call('HSETNX', KEYS[1], 'total', ARGV[1]) == 0 then
  return {tonumber(redis.call('HGET', KEYS[1], 'total')), 0}
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if tonumber(ARGV[1]) == 0 then
  return {0, redis.call('HSETNX', KEYS[1], 'finished', 1)}
end
return {tonumber(ARGV[1]), 0}
"""


@dataclass(frozen=True)
class Progress:
    """Where an import stands after a mark: ``counted`` is False for a repeated item."""

    current: int
    total: int
    failed: int
    counted: bool
    finished: bool


class CompletionTracker:
    """Counts finished items per import and publishes its progress and single ending.

    Parameters:
      broadcaster: Where the import's events are published.
      redis_client: Keep the counts in Redis (for workers in many processes).
      database: Or in the database: a database from
        :func:`~dramatiq_shared.db.models.init_database`, for embedded use.
      namespace: Prefix of the Redis keys (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.

    Raises:
      ConfigError: Unless exactly one of ``redis_client`` and ``database`` is given.
    """

    def __init__(
        self,
        broadcaster: Broadcaster,
        *,
        redis_client: redis.Redis | None = None,
        database: peewee.Database | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        if (redis_client is None) == (database is None):
            raise ConfigError("CompletionTracker needs exactly one of redis_client and database")
        self.broadcaster = broadcaster
        self.keys = Keys(namespace)
        self._redis = redis_client
        if redis_client is not None:
            self._mark = redis_client.register_script(_MARK)
            self._expect = redis_client.register_script(_EXPECT)
        self._store = CompletionCounts(database) if database is not None else None
        self._refused: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._refused_lock = threading.Lock()

    def expect(self, import_id: str, total: int) -> None:
        """Declare how many items the import has; repeating it with the same total is fine.

        An import of 0 items is complete at once.

        Raises:
          ValidationError: When the import was expected with another total, or a value is invalid.
        """
        check_id("import_id", import_id)
        check_int("total", total, minimum=0, maximum=INT32_MAX)
        if self._store is not None:
            stored, finished = self._store.expect(import_id, total)
        else:
            assert self._redis is not None
            reply = self._expect(keys=[self.keys.completion(import_id)], args=[total, _TTL])
            stored, finished = int(reply[0]), bool(int(reply[1]))
        if stored != total:
            raise ValidationError(
                f"total: import {import_id!r} expects {stored} items, not {total}", field="total"
            )
        if finished:
            self._finish(import_id, Progress(0, 0, 0, counted=False, finished=True))

    def mark_done(self, import_id: str, item_id: str, ok: bool = True) -> Progress:
        """Count ``item_id`` as done (failed when ``ok`` is False), once.

        A mark for an import that was never expected, or that already has all its
        items, counts nothing: it is logged (once per import) and returns a progress
        with ``counted`` and ``finished`` False, so the message marking it is not failed
        for it.

        Returns:
          The import's progress; ``finished`` is True for exactly one call per import.

        Raises:
          ValidationError: When a value is invalid.
        """
        check_id("import_id", import_id)
        check_id("item_id", item_id)
        if self._store is not None:
            outcome, done, total, failed, finished = self._store.mark(import_id, item_id, ok)
        else:
            assert self._redis is not None
            reply = self._mark(
                keys=[self.keys.completion(import_id), self.keys.completion_items(import_id)],
                args=[item_id, 1 if ok else 0, _TTL],
            )
            outcome, done, total, failed, finished = (int(v) for v in reply)
        if outcome < 0:
            self._refuse(import_id, outcome, total)
            return Progress(done, total, failed, counted=False, finished=False)
        progress = Progress(done, total, failed, counted=outcome == 1, finished=bool(finished))
        if progress.counted:
            self.broadcaster.publish(
                StatusEvent(
                    import_id,
                    NoteStatus.PROCESSING,
                    message=f"{done} of {total} done",
                    context=CONTEXT,
                    current_count=done,
                    total_count=total,
                )
            )
        if progress.finished:
            self._finish(import_id, progress)
        return progress

    def _refuse(self, import_id: str, outcome: int, total: int) -> None:
        """Log, once per import and kind, a mark that counted nothing."""
        with self._refused_lock:
            if (import_id, outcome) in self._refused:
                return
            self._refused[(import_id, outcome)] = None
            if len(self._refused) > _REMEMBERED:
                self._refused.popitem(last=False)
        if outcome == -1:
            logger.warning(
                "Import {} was never expected (CompletionTracker.expect(import_id, total)"
                " declares it): its items are not counted and it will not be ended",
                import_id,
            )
        else:
            logger.warning(
                "Import {} already has all the items it expects ({}): further items are not"
                " counted",
                import_id,
                total,
            )

    def _finish(self, import_id: str, progress: Progress) -> None:
        status = NoteStatus.FAILED if progress.failed else NoteStatus.COMPLETED
        metadata: dict[str, Any] = {"failed": progress.failed, "total": progress.total}
        message = f"{progress.failed} of {progress.total} failed" if progress.failed else "all done"
        self.broadcaster.publish(
            StatusEvent(
                import_id,
                status,
                message=message,
                context=CONTEXT,
                current_count=progress.current,
                total_count=progress.total,
                metadata=metadata,
            )
        )
        # Sent before the message that finished the import is acked, not a linger later:
        # once the import is marked finished, nobody would publish its end again.
        if not self.broadcaster.flush(timeout=1.0):
            logger.warning("The end of import {} is not streamed yet; it stays queued", import_id)
