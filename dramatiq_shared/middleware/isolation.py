"""Isolation: messages of a process run side by side, but a suspect runs alone.

``DeathLimit`` holds a message that came back from a worker's death to run alone in
its process, so that a death during that run is its own. A message enters side by
side (:data:`SHARED`) or alone (:data:`ALONE`); one waiting to run alone holds back
new ones (it would wait for ever behind a stream of them), and never runs beside
another running alone.
"""

from __future__ import annotations

import threading

__all__ = ["ALONE", "SHARED", "Isolation"]

#: How a message holds the isolation: beside others, or alone.
SHARED, ALONE = "shared", "alone"


class Isolation:
    """Messages of a process run side by side, but one that may have killed a worker
    runs alone: it waits for those in flight to finish, and holds back new ones."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._running = 0  # side by side
        self._alone = False
        self._waiting = 0  # to run alone

    def enter(self) -> None:
        """Run side by side; waits while a message runs, or waits to run, alone."""
        with self._changed:
            while self._alone or self._waiting:
                self._changed.wait()
            self._running += 1

    def enter_alone(self, wait: float) -> None:
        """Run alone: wait up to ``wait`` seconds for those in flight to finish."""
        with self._changed:
            self._waiting += 1
            try:
                if not self._changed.wait_for(lambda: not self._running and not self._alone, wait):
                    # Those in flight outlast the wait: run beside them, but never beside
                    # another message running alone.
                    self._changed.wait_for(lambda: not self._alone)
                self._alone = True
            finally:
                self._waiting -= 1

    def leave(self, how: str) -> None:
        """Let go of the isolation as it was held: :data:`SHARED` or :data:`ALONE`."""
        with self._changed:
            if how == ALONE:
                self._alone = False
                self._changed.notify_all()
            else:
                self._running -= 1
                if self._waiting:  # nobody else waits while none waits to run alone
                    self._changed.notify_all()
