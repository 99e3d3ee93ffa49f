"""The Broadcaster: status events to the live transport and the database, off the worker thread.

``publish()`` validates an event and hands it to a background thread, so the actor
that reports progress pays for a lock and a list append, not a round trip. That thread:

* coalesces: a non-terminal event whose (import, note, context) sent one less than
  ``broadcast_interval`` ago waits, and a newer one of the same key replaces it (the
  newest wins). A waiting event goes out when its interval has passed, or just before
  any later event of its import, so each import's events keep the order they were
  published in. Terminal events (COMPLETED, FAILED) are never held back;
* appends what goes out to the transport, one round trip per batch, which gives each
  event its id;
* writes the same events to the database in batches of ``batch_size``, at the latest
  ``broadcast_interval`` after the first of them, at once after a terminal event, and
  when the broadcaster is flushed or closed (the middleware closes it at worker
  shutdown).

A failing transport or database is retried ``max_retries`` times within ``timeout``;
a batch still refused is kept and tried again later, in order, backing off up to 30 s.
A batch keeps one token across its tries, so a try whose reply was lost (Redis going
down mid-call) is not appended twice, and the history never has a gap where the
stream has none. Only beyond 100,000 waiting events are the oldest dropped, logged
and counted (``failed``, ``persist_failed``). A status event is a side concern: its failure never
fails or delays the job that reported it.

On a transport that outlives the process (:class:`~.transport.Reclaimable`, such as
Redis), events are kept there until the history has them, so a process killed between
streaming and persisting loses nothing: every ``reclaim_after`` milliseconds each
broadcaster persists what was left unpersisted that long (counted ``reclaimed``).
Writing an event twice leaves one row, so reclaiming what a slow but live process
still holds costs a write and nothing else.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, MutableSequence
from typing import Any, TypeVar

from loguru import logger

from ..config import StatusConfig
from ..errors import ConfigError
from ..metrics import BROADCASTS
from ..stores.status_history import StatusHistory
from .events import StatusEvent
from .transport import Reclaimable, Transport

__all__ = [
    "Broadcaster",
    "add_status_event_and_broadcast",
    "get_broadcaster",
    "set_broadcaster",
]

Key = tuple[str, str | None, str | None]
#: An event as published: its id, its timestamp (ms) and the event.
Record = tuple[int, int, StatusEvent]
_Batch = TypeVar("_Batch")


#: Most published events kept for the history while the database is unreachable.
MAX_UNPERSISTED = 100_000
#: Longest wait, in seconds, between two tries at writing the history.
_MAX_PERSIST_BACKOFF = 30.0


class Broadcaster:
    """Publishes status events to a transport and persists them.

    Parameters:
      transport: Where events go live (:class:`~dramatiq_shared.status.transport.RedisTransport`
        or :class:`~dramatiq_shared.status.transport.MemoryTransport`).
      database: Where their history is kept: a :class:`StatusHistory`, or None to keep
        none.
      config: Coalescing, retries and batching. Default ``StatusConfig()``.
    """

    def __init__(
        self,
        transport: Transport,
        database: StatusHistory | None = None,
        config: StatusConfig | None = None,
    ) -> None:
        self.transport = transport
        self.history = database
        self.config = config or StatusConfig()
        self.counts: Counter[str] = Counter()  # sent, coalesced, failed, persisted, reclaimed, ...
        self._incoming: list[StatusEvent] = []
        lock = threading.Lock()
        self._wake = threading.Condition(lock)  # the thread waits for work on it
        self._idle = threading.Condition(lock)  # flush() waits for the thread on it
        self._busy = False
        self._closed = False
        # Owned by the background thread:
        self._last_sent: dict[Key, float] = {}
        self._waiting: dict[str, OrderedDict[Key, StatusEvent]] = {}
        self._to_persist: list[tuple[str, list[Record]]] = []  # (batch token, records)
        self._persist_due: float | None = None
        self._outbox: deque[tuple[str, int, list[StatusEvent]]] = deque()
        self._send_backoff = 0.0  # seconds; grows while the transport is unreachable
        self._send_blocked_until = 0.0
        self._persist_backoff = 0.0  # seconds; grows while the database is unreachable
        self._persist_blocked_until = 0.0
        self._reclaimable = (
            transport if database is not None and isinstance(transport, Reclaimable) else None
        )
        self._reclaim_due = time.monotonic() + self.config.reclaim_after / 1000
        self._thread = threading.Thread(target=self._run, name="status-broadcaster", daemon=True)
        self._thread.start()

    # --- the worker threads' side ---------------------------------------------------------

    def publish(self, event: StatusEvent | Mapping[str, Any]) -> StatusEvent:
        """Validate ``event`` and queue it for broadcasting.

        Returns:
          The validated event.

        Raises:
          ValidationError: When the event is invalid (nothing is queued).
        """
        if not isinstance(event, StatusEvent):
            event = StatusEvent.from_mapping(event)
        with self._wake:
            if self._closed:
                logger.warning("Status event for {} after the broadcaster closed", event.import_id)
                return event
            self._incoming.append(event)
            self._wake.notify()
        return event

    def flush(self, timeout: float = 10.0) -> bool:
        """Send and persist everything published so far, waiting up to ``timeout`` seconds.

        Returns:
          True when everything went out in time.
        """
        deadline = time.monotonic() + timeout
        with self._wake:
            self._flush_requested = True
            self._wake.notify()
            while self._incoming or self._busy or self._pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush, then stop the background thread; what could not go out is counted lost."""
        self.flush(timeout)
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        unsent = sum(len(events) for _, _, events in self._outbox)
        if unsent:
            logger.error(
                "{} status events were never sent: the transport stayed out of reach", unsent
            )
            self.count("failed", unsent)
        unpersisted = self._unpersisted()
        if unpersisted and self._reclaimable is not None:
            logger.warning("{} status events are left for another process to persist", unpersisted)
        elif unpersisted:
            logger.error("{} status events never reached the history", unpersisted)
            self.counts["persist_failed"] += unpersisted

    # --- the background thread --------------------------------------------------------------

    _flush_requested = False

    def _unpersisted(self) -> int:
        return sum(len(records) for _, records in self._to_persist)

    def _pending(self) -> bool:
        return bool(self._to_persist or self._outbox) or any(self._waiting.values())

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._incoming or self._closed or self._flush_requested):
                    timeout = self._next_deadline()
                    if timeout is not None and timeout <= 0:
                        break
                    self._wake.wait(timeout)
                incoming, self._incoming = self._incoming, []
                flushing, self._flush_requested = self._flush_requested or self._closed, False
                closed = self._closed
                self._busy = True
            try:
                self._handle(incoming, flushing)
            except Exception as error:  # never let the thread die
                logger.opt(exception=error).error("The status broadcaster failed: {}", error)
            with self._wake:
                self._busy = False
                self._idle.notify_all()
            if closed:
                return

    def _next_deadline(self) -> float | None:
        now = time.monotonic()
        interval = self.config.broadcast_interval / 1000
        deadlines = [
            self._last_sent.get(key, 0.0) + interval - now
            for waiting in self._waiting.values()
            for key in waiting
        ]
        if self._persist_due is not None:
            deadlines.append(self._persist_due - now)
        if self._outbox:
            deadlines.append(self._send_blocked_until - now)
        if self._reclaimable is not None:
            deadlines.append(self._reclaim_due - now)
        return min(deadlines) if deadlines else None

    def _handle(self, incoming: list[StatusEvent], flushing: bool) -> None:
        now = time.monotonic()
        interval = self.config.broadcast_interval / 1000
        outgoing: list[StatusEvent] = []
        for event in incoming:
            waiting = self._waiting.setdefault(event.import_id, OrderedDict())
            if event.is_terminal or now - self._last_sent.get(event.key, -interval) >= interval:
                outgoing.extend(waiting.values())  # the import's earlier events go first
                waiting.clear()
                outgoing.append(event)
                self._last_sent[event.key] = now
            else:
                if event.key in waiting:
                    self.count("coalesced")
                waiting[event.key] = event
                waiting.move_to_end(event.key)
        for import_id, waiting in list(self._waiting.items()):
            due = any(now - self._last_sent.get(key, -interval) >= interval for key in waiting)
            if waiting and (due or flushing):
                outgoing.extend(waiting.values())
                for key in waiting:
                    self._last_sent[key] = now
                waiting.clear()
            if not waiting:
                del self._waiting[import_id]
        if outgoing:
            self._send(outgoing)
        elif self._outbox:
            self._drain_outbox()
        if self._to_persist and (
            flushing
            or (self._persist_due is not None and now >= self._persist_due)
            or (
                now >= self._persist_blocked_until
                and (
                    self._unpersisted() >= self.config.batch_size
                    or any(event.is_terminal for event in outgoing)
                )
            )
        ):
            self._persist()
        if self._reclaimable is not None and now >= max(
            self._reclaim_due, self._persist_blocked_until
        ):
            self._reclaim(self._reclaimable)

    def _send(self, events: list[StatusEvent]) -> None:
        # A batch keeps its token across tries: a try whose reply was lost already gave
        # the events ids, and the next try gets the same ids instead of new copies.
        self._outbox.append((uuid.uuid4().hex, int(time.time() * 1000), events))
        self._drain_outbox()

    def _drain_outbox(self) -> None:
        """Send the waiting batches in order; on a failure, keep them and back off."""
        if time.monotonic() < self._send_blocked_until:
            return
        while self._outbox:
            batch, timestamp, events = self._outbox[0]
            append = functools.partial(
                self.transport.append,
                events,
                timestamp,
                batch=batch,
                persist=self.history is not None,
            )
            ids = self._retrying("send", append)
            if ids is None:
                dropped = _drop_oldest(self._outbox, lambda batch: len(batch[2]))
                if dropped:
                    self.count("failed", dropped)
                    logger.error("Dropping {} status events the transport never took", dropped)
                self._send_backoff = min(max(1.0, 2 * self._send_backoff), _MAX_PERSIST_BACKOFF)
                self._send_blocked_until = time.monotonic() + self._send_backoff
                return
            self._outbox.popleft()
            self._send_backoff = 0.0
            self.count("sent", len(events))
            if self.history is not None:
                records = [(i, timestamp, e) for i, e in zip(ids, events, strict=True)]
                self._to_persist.append((batch, records))
                if self._persist_due is None:
                    self._persist_due = time.monotonic() + self.config.broadcast_interval / 1000

    def count(self, outcome: str, number: int = 1) -> None:
        """Count ``number`` events with ``outcome``, here and in the Prometheus metric.

        Parameters:
          outcome: What became of them, such as ``"sent"`` or ``"failed"``.
          number: How many. Default 1.
        """
        self.counts[outcome] += number
        BROADCASTS.labels(outcome).inc(number)

    def _persist(self) -> None:
        batches, self._to_persist, self._persist_due = self._to_persist, [], None
        records = [record for _, batch in batches for record in batch]
        if self._write(records):
            self.counts["persisted"] += len(records)
            self._persist_backoff = 0.0
            self._persist_blocked_until = 0.0
            self._settle([token for token, _ in batches])
            return
        # Kept and tried again later: the history must hold what the stream has, or
        # the relay would show a gap once the stream trims those events.
        dropped = _drop_oldest(batches, lambda batch: len(batch[1]))
        if dropped and self._reclaimable is not None:
            logger.warning("Leaving {} status events for a later reclaim", dropped)
        elif dropped:
            logger.error("Dropping the {} oldest status events the history never got", dropped)
            self.counts["persist_failed"] += dropped
        self._to_persist = batches
        self._persist_backoff = min(max(1.0, 2 * self._persist_backoff), _MAX_PERSIST_BACKOFF)
        self._persist_blocked_until = time.monotonic() + self._persist_backoff
        self._persist_due = self._persist_blocked_until

    def _write(self, records: list[Record]) -> bool:
        history = self.history
        assert history is not None
        write = functools.partial(history.write, records, batch_size=self.config.batch_size)
        return self._retrying("persist", write) is not None

    def _settle(self, batches: list[str]) -> None:
        """Tell the transport these batches are persisted; a failure only costs a rewrite."""
        if self._reclaimable is None:
            return
        try:
            self._reclaimable.persisted(batches)
        except Exception as error:
            logger.warning(
                "Persisted status events stay in the transport until reclaimed: {}: {}",
                type(error).__name__,
                error,
            )

    def _reclaim(self, transport: Reclaimable, limit: int = 100) -> None:
        """Persist what other (dead) processes streamed and never persisted."""
        self._reclaim_due = time.monotonic() + self.config.reclaim_after / 1000
        try:
            found = transport.reclaim(self.config.reclaim_after, limit)
        except Exception as error:
            logger.warning("Could not reclaim status events: {}: {}", type(error).__name__, error)
            return
        if found.expired or found.unreadable:
            logger.error(
                "{} batches of status events expired and {} were unreadable before anyone"
                " persisted them",
                found.expired,
                found.unreadable,
            )
            self.counts["lost_batches"] += found.expired + found.unreadable
        records = [record for _, records in found.batches for record in records]
        if records and self._write(records):
            self._settle([token for token, _ in found.batches])
            self.count("reclaimed", len(records))
            logger.info("Persisted {} status events left unpersisted", len(records))
            if len(found.batches) == limit:  # there may be more
                self._reclaim_due = time.monotonic()

    def _retrying(self, what: str, action: Any) -> Any:
        deadline = time.monotonic() + self.config.timeout / 1000
        last: Exception | None = None
        attempt = 0
        for attempt in range(self.config.max_retries + 1):
            try:
                result = action()
                return True if result is None else result
            except Exception as error:
                last = error
                if attempt == self.config.max_retries or time.monotonic() >= deadline:
                    break
                time.sleep(min(0.05 * 2**attempt, max(0.0, deadline - time.monotonic())))
        logger.opt(exception=last).error(
            "Status events could not {} after {} tries: {}: {}",
            what,
            attempt + 1,
            type(last).__name__,
            last,
        )
        return None


def _drop_oldest(batches: MutableSequence[_Batch], size: Callable[[_Batch], int]) -> int:
    """Drop the oldest batches, never the newest, while more than ``MAX_UNPERSISTED``
    events wait in ``batches``; return how many events were dropped."""
    waiting = sum(size(batch) for batch in batches)
    dropped = 0
    while waiting > MAX_UNPERSISTED and len(batches) > 1:
        oldest = size(batches[0])
        del batches[0]
        waiting -= oldest
        dropped += oldest
    return dropped


_current: Broadcaster | None = None


def set_broadcaster(broadcaster: Broadcaster | None) -> None:
    """Make ``broadcaster`` the one :func:`add_status_event_and_broadcast` uses."""
    global _current  # noqa: PLW0603 - one per process, as dramatiq.set_broker does
    _current = broadcaster


def get_broadcaster() -> Broadcaster:
    """The configured broadcaster.

    Raises:
      ConfigError: When none is configured.
    """
    if _current is None:
        raise ConfigError(
            "no status broadcaster is configured: call dramatiq_shared.setup_broker(), or"
            " set_broadcaster(Broadcaster(transport, history)) before publishing"
        )
    return _current


def add_status_event_and_broadcast(event_or_fields: StatusEvent | Mapping[str, Any]) -> StatusEvent:
    """Publish a status event through the configured broadcaster.

    Parameters:
      event_or_fields: A :class:`StatusEvent`, or its fields (snake_case or camelCase).

    Returns:
      The validated event.

    Raises:
      ValidationError: When the event is invalid.
      ConfigError: When no broadcaster is configured.
    """
    return get_broadcaster().publish(event_or_fields)
