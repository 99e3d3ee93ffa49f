"""The Broadcaster: status events to the live transport and the database, off the worker thread.

``publish()`` validates an event and hands it to a background thread, so the actor
that reports progress pays for a lock and a list append, not a round trip. The thread
gathers what is published within ``linger`` milliseconds of the first event (20 by
default), so a busy worker sends batches, and wires three parts together:

* a :class:`~.coalescer.Coalescer` decides what goes out now: a progress event that
  follows one of its (import, note, context) by less than ``broadcast_interval``
  waits, the newest winning, without changing the order of its import's events;
  terminal events (COMPLETED, FAILED) are never held back, and replace a waiting
  event of their key;
* an :class:`~.outbox.Outbox` appends what goes out to the transport, one round trip
  per batch, which gives each event its id;
* a :class:`~.persister.Persister` writes the same events to the database in batches,
  and on a :class:`~.transport.Reclaimable` transport (Redis) persists what a killed
  process streamed but never persisted (counted ``reclaimed``).

A failing transport or database is retried ``max_retries`` times within ``timeout``;
a batch still refused is kept and tried again later, in order, backing off up to 30 s.
A batch keeps one token across its tries, so a try whose reply was lost (Redis going
down mid-call) is not appended twice, and the history never has a gap where the
stream has none. Only beyond 100,000 waiting events are the oldest dropped, logged
and counted (``failed``, ``persist_failed``). A status event is a side concern: its
failure never fails or delays the job that reported it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from loguru import logger

from ..config import StatusConfig
from ..errors import ConfigError
from ..metrics import BROADCASTS
from ..stores.status_history import StatusHistory
from .coalescer import Coalescer
from .events import StatusEvent
from .outbox import Batch, Outbox
from .persister import Persister
from .transport import MAX_BATCH, Transport

__all__ = [
    "Broadcaster",
    "add_status_event_and_broadcast",
    "add_status_event_and_broadcast_async",
    "get_broadcaster",
    "set_broadcaster",
]


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
        self._incoming_since = 0.0  # when the first of them was published (monotonic)
        self._linger = self.config.linger / 1000
        lock = threading.Lock()
        self._wake = threading.Condition(lock)  # the thread waits for work on it
        self._idle = threading.Condition(lock)  # flush() waits for the thread on it
        self._busy = False
        self._flush_requested = False
        self._closed = False
        # Owned by the background thread:
        self._coalescer = Coalescer(self.config.broadcast_interval / 1000)
        self._sender: Outbox[StatusEvent] = Outbox(
            "send", self._append, self.config, together=False, dropped=self._unsent
        )
        self._persister = (
            None
            if database is None
            else Persister(database, transport, self.config, counts=self.counts, count=self.count)
        )
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
            if len(self._incoming) == 1:  # the thread checks for more before it waits
                self._incoming_since = time.monotonic()
                self._wake.notify()
            elif len(self._incoming) == MAX_BATCH:
                self._wake.notify()
        return event

    def flush(self, timeout: float = 10.0) -> bool:
        """Send and persist everything published so far, waiting up to ``timeout`` seconds.

        Waiting batches are tried at once, however long the last refusal said to wait.

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
        unsent = len(self._sender)
        if unsent:
            logger.error(
                "{} status events were never sent: the transport stayed out of reach", unsent
            )
            self.count("failed", unsent)
        if self._persister is not None:
            self._persister.close()

    def count(self, outcome: str, number: int = 1) -> None:
        """Count ``number`` events with ``outcome``, here and in the Prometheus metric.

        Parameters:
          outcome: What became of them, such as ``"sent"`` or ``"failed"``.
          number: How many. Default 1.
        """
        self.counts[outcome] += number
        BROADCASTS.labels(outcome).inc(number)

    # --- the background thread --------------------------------------------------------------

    def _pending(self) -> bool:
        return bool(self._sender or self._persister or self._coalescer)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._flush_requested):
                    timeout = self._next_deadline()
                    if self._incoming:
                        if len(self._incoming) >= MAX_BATCH:
                            break
                        gathered = self._incoming_since + self._linger - time.monotonic()
                        timeout = gathered if timeout is None else min(timeout, gathered)
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
        """Seconds until the thread has something to do unasked; None for never."""
        deadlines = [
            self._coalescer.next_due(),
            self._sender.retry_at if self._sender else None,
            self._persister.next_deadline() if self._persister is not None else None,
        ]
        due = [deadline for deadline in deadlines if deadline is not None]
        return min(due) - time.monotonic() if due else None

    def _handle(self, incoming: list[StatusEvent], flushing: bool) -> None:
        released = self._coalescer.take(incoming, time.monotonic(), flush=flushing)
        if released.coalesced:
            self.count("coalesced", released.coalesced)
        for start in range(0, len(released.events), MAX_BATCH):
            self._sender.add(Batch(released.events[start : start + MAX_BATCH]))
        if self._sender:
            self._sender.drain(force=flushing)
        if self._persister is not None:
            terminal = any(event.is_terminal for event in released.events)
            self._persister.run(flush=flushing, terminal=terminal)

    def _append(self, batches: Sequence[Batch[StatusEvent]]) -> None:
        """Append one batch to the transport and queue it, numbered, for the history."""
        (batch,) = batches
        ids = self.transport.append(
            batch.items, batch.timestamp, batch=batch.token, persist=self._persister is not None
        )
        self.count("sent", len(batch.items))
        if self._persister is not None:
            records = [(i, batch.timestamp, e) for i, e in zip(ids, batch.items, strict=True)]
            self._persister.add(Batch(records, batch.timestamp, batch.token))

    def _unsent(self, events: int) -> None:
        self.count("failed", events)
        logger.error("Dropping {} status events the transport never took", events)


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


async def add_status_event_and_broadcast_async(
    event_or_fields: StatusEvent | Mapping[str, Any],
) -> StatusEvent:
    """Publish a status event through the configured broadcaster, from a coroutine.

    For ``async def`` actors (Dramatiq's ``AsyncIO`` middleware). It never blocks the
    event loop: publishing validates the event and appends it to the broadcaster's list
    under a lock held only for such bookkeeping, never while the transport or the
    database is waited for, so it runs on the loop itself; handing it to a thread would
    cost more than it does.
    The transport and the database are the broadcaster thread's, whose waits (a
    stalled Redis, say) the coroutine never shares. Its parameter, return value and
    errors are those of :func:`add_status_event_and_broadcast`.
    """
    return get_broadcaster().publish(event_or_fields)
