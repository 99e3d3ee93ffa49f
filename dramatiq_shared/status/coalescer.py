"""Coalescing status events: which go out now, which wait, and which a newer one replaces.

Pure bookkeeping: no threads, no I/O and no clock of its own. The caller passes ``now``
(seconds, from one monotonic clock, never decreasing between calls).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from .events import StatusEvent

__all__ = ["Coalescer", "Released"]

Key = tuple[str, str | None, str | None]


class Released(NamedTuple):
    """What one :meth:`Coalescer.take` let out."""

    #: The events to send now, in the order they must go out.
    events: list[StatusEvent]
    #: How many waiting events a newer one of the same key replaced.
    coalesced: int


class Coalescer:
    """Holds back progress events that follow one of their key too closely.

    A non-terminal event whose key (import, note, context) went out less than
    ``interval`` ago waits, and a newer one of the same key replaces it: the newest
    wins, a terminal one too (a message's PROCESSING that is still waiting when its
    COMPLETED comes is not sent at all). A waiting event goes out once its interval has
    passed, or just before any later event of its import that goes out, so each
    import's events keep the order they were published in. Terminal events (COMPLETED,
    FAILED) are never held and never replaced.

    Parameters:
      interval: Seconds between two events of one key; ``0`` holds nothing back.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # When each key last went out, oldest first: a key sent more than ``interval``
        # ago is as good as never sent, so those are pruned from the front.
        self._sent: OrderedDict[Key, float] = OrderedDict()
        self._waiting: dict[str, OrderedDict[Key, StatusEvent]] = {}

    def __len__(self) -> int:
        """How many events wait."""
        return sum(len(waiting) for waiting in self._waiting.values())

    def take(self, incoming: Iterable[StatusEvent], now: float, *, flush: bool = False) -> Released:
        """Add ``incoming`` (in publishing order) and release what may go out at ``now``.

        Parameters:
          incoming: Newly published events.
          now: The current time, in seconds.
          flush: Release every waiting event, due or not.

        Returns:
          The events to send, and how many were coalesced.
        """
        outgoing: list[StatusEvent] = []
        coalesced = 0
        for event in incoming:
            waiting = self._waiting.setdefault(event.import_id, OrderedDict())
            if event.is_terminal or self._due(event.key, now):
                if waiting.pop(event.key, None) is not None:  # it supersedes its own key's
                    coalesced += 1
                self._release(waiting, outgoing, now)  # the import's earlier events go first
                outgoing.append(event)
                self._mark_sent(event.key, now)
            else:
                if event.key in waiting:
                    coalesced += 1
                    del waiting[event.key]  # published after the others waiting: goes after them
                waiting[event.key] = event
        for import_id, waiting in list(self._waiting.items()):
            if flush or any(self._due(key, now) for key in waiting):
                self._release(waiting, outgoing, now)
            if not waiting:
                del self._waiting[import_id]
        self._prune(now)
        return Released(outgoing, coalesced)

    def next_due(self) -> float | None:
        """When the first waiting event falls due, or None when none waits."""
        return min(
            (self._sent.get(key, float("-inf")) + self.interval for key in self._keys()),
            default=None,
        )

    def _keys(self) -> Iterable[Key]:
        return (key for waiting in self._waiting.values() for key in waiting)

    def _due(self, key: Key, now: float) -> bool:
        sent = self._sent.get(key)
        return sent is None or now - sent >= self.interval

    def _release(
        self, waiting: OrderedDict[Key, StatusEvent], outgoing: list[StatusEvent], now: float
    ) -> None:
        outgoing.extend(waiting.values())
        for key in waiting:
            self._mark_sent(key, now)
        waiting.clear()

    def _mark_sent(self, key: Key, now: float) -> None:
        self._sent[key] = now
        self._sent.move_to_end(key)

    def _prune(self, now: float) -> None:
        # Without this every key ever sent (a note each) would be remembered for good.
        while self._sent:
            key, sent = next(iter(self._sent.items()))
            if now - sent < self.interval:
                return
            del self._sent[key]
