"""Writing streamed status events to the history, and what dead processes left unwritten.

The history must end up holding what the stream has, or the relay would show a gap
once the stream trims those events. So the events a transport numbered are kept, in
order, until the history takes them (an :class:`~.outbox.Outbox`); and on a transport
that outlives the process (:class:`~.transport.Reclaimable`) whatever a killed process
streamed and never persisted is found there and written by a live one.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

from loguru import logger

from ..config import StatusConfig
from ..stores.status_history import StatusHistory
from .events import StatusEvent
from .outbox import Batch, Outbox, retrying
from .transport import Reclaimable, Transport

__all__ = ["Persister", "Record"]

#: An event as published: its id, its timestamp (ms) and the event.
Record = tuple[int, int, StatusEvent]


class Persister:
    """Persists published events in batches, and reclaims what others left.

    Events are written ``batch_size`` at a time, at the latest ``broadcast_interval``
    after the first of them, at once after a terminal event, and on a flush. Every
    ``reclaim_after`` ms it persists what was left unpersisted that long (counted
    ``reclaimed``); writing an event twice leaves one row, so reclaiming what a slow
    but live process still holds costs a write and nothing else.

    Parameters:
      history: Where the events are written.
      transport: The transport they were published to; reclaimed from if it is
        :class:`~.transport.Reclaimable`.
      config: Batching, reclaiming, retries.
      counts: The broadcaster's counts, for ``persisted``, ``persist_failed`` and
        ``lost_batches``.
      count: Counts an outcome in the metric too (``reclaimed``).
      clock: Monotonic seconds. Default :func:`time.monotonic`.
    """

    def __init__(
        self,
        history: StatusHistory,
        transport: Transport,
        config: StatusConfig,
        *,
        counts: Counter[str],
        count: Callable[[str, int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.history = history
        self.config = config
        self._counts = counts
        self._count = count
        self._clock = clock
        self._reclaimable = transport if isinstance(transport, Reclaimable) else None
        self._outbox: Outbox[Record] = Outbox(
            "persist", self._persist, config, together=True, dropped=self._dropped, clock=clock
        )
        self._due = math.inf  # when the waiting events are to be written at the latest
        self._reclaim_due = clock() + config.reclaim_after / 1000

    def __len__(self) -> int:
        """How many events wait to be persisted."""
        return len(self._outbox)

    def add(self, batch: Batch[Record]) -> None:
        """Queue a batch the transport numbered (its token is the transport's)."""
        self._outbox.add(batch)
        self._due = min(self._due, self._clock() + self.config.broadcast_interval / 1000)

    def run(self, *, flush: bool = False, terminal: bool = False) -> None:
        """Persist the waiting events if they are due, and reclaim if that is due.

        Parameters:
          flush: Persist now, whatever is due and however long the last failure was.
          terminal: A terminal event was just published: persist now.
        """
        now = self._clock()
        due = flush or terminal or now >= self._due or len(self._outbox) >= self.config.batch_size
        if self._outbox and due and self._outbox.drain(force=flush):
            self._due = math.inf
        # Reclaiming while the history refuses writes would only lease batches in vain.
        if self._reclaimable is not None and now >= max(self._reclaim_due, self._outbox.retry_at):
            self._reclaim(self._reclaimable)

    def next_deadline(self) -> float | None:
        """When :meth:`run` next has something to do, on the clock; None for never."""
        deadlines = []
        if self._outbox:
            deadlines.append(max(self._due, self._outbox.retry_at))
        if self._reclaimable is not None:
            deadlines.append(max(self._reclaim_due, self._outbox.retry_at))
        return min(deadlines, default=None)

    def close(self) -> None:
        """Log, and count, what never reached the history."""
        unpersisted = len(self._outbox)
        if unpersisted and self._reclaimable is not None:
            logger.warning("{} status events are left for another process to persist", unpersisted)
        elif unpersisted:
            logger.error("{} status events never reached the history", unpersisted)
            self._counts["persist_failed"] += unpersisted

    def _write(self, batches: Sequence[Batch[Record]]) -> None:
        records = [record for batch in batches for record in batch.items]
        self.history.write(records, batch_size=self.config.batch_size)

    def _persist(self, batches: Sequence[Batch[Record]]) -> None:
        self._write(batches)
        self._counts["persisted"] += sum(len(batch.items) for batch in batches)
        self._settle(batches)

    def _dropped(self, events: int) -> None:
        if self._reclaimable is not None:
            logger.warning("Leaving {} status events for a later reclaim", events)
        else:
            logger.error("Dropping the {} oldest status events the history never got", events)
            self._counts["persist_failed"] += events

    def _settle(self, batches: Sequence[Batch[Record]]) -> None:
        """Tell the transport these batches are persisted; a failure only costs a rewrite."""
        if self._reclaimable is None:
            return
        try:
            self._reclaimable.persisted([batch.token for batch in batches])
        except Exception as error:
            logger.warning(
                "Persisted status events stay in the transport until reclaimed: {}: {}",
                type(error).__name__,
                error,
            )

    def _reclaim(self, transport: Reclaimable, limit: int = 100) -> None:
        """Persist what other (dead) processes streamed and never persisted."""
        self._reclaim_due = self._clock() + self.config.reclaim_after / 1000
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
            self._counts["lost_batches"] += found.expired + found.unreadable
        # Not queued on failure: they stay in the transport, leased, for a later reclaim.
        batches = [Batch(records, token=token) for token, records in found.batches]
        if batches and retrying("persist", lambda: self._write(batches), self.config, self._clock):
            self._settle(batches)
            events = sum(len(batch.items) for batch in batches)
            self._count("reclaimed", events)
            logger.info("Persisted {} status events left unpersisted", events)
            if len(batches) == limit:  # there may be more
                self._reclaim_due = self._clock()
