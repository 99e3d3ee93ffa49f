"""What a retry budget's store does, whichever holds it, and the in-process store.

A budget counts successes and retries in time buckets of ``window / 10``; its window is
the current bucket and the ten before it, so it always covers at least ``window`` (at
most ``window`` plus a bucket). A retry is admitted when the retries in the window, this
one included, are at most ``ratio`` x the successes in it + ``minimum`` x the window's
seconds, and then counted, in one atomic step. Two stores implement it: Redis (shared by
every process, :mod:`dramatiq_shared.budgets.redis_state`) and :class:`LocalBudgetState`
(this process's memory, for embedded runs). Replies are data, so one table of cases
tests both (``tests/budgets/test_state.py``).
"""

from __future__ import annotations

import math
import threading
import time
from typing import NamedTuple, Protocol

from ..config import RetryBudgetConfig
from ..config.budget import BUCKETS

__all__ = ["BudgetReply", "BudgetState", "BudgetUnavailableError", "LocalBudgetState"]


class BudgetReply(NamedTuple):
    """A budget store's answer to a spend or a read."""

    #: Whether the retry may run (a read admits nothing).
    admitted: bool
    #: Retries counted in the window, an admitted one included.
    retries: int
    #: Retries the window allows: ``ratio`` x its successes + ``minimum`` x its seconds.
    allowance: float
    #: Milliseconds until the oldest counted retry leaves the window (0 when none is).
    wait: int

    @property
    def tokens(self) -> int:
        """Retries the budget would admit now."""
        return max(0, math.floor(self.allowance - self.retries))


class BudgetUnavailableError(ConnectionError):
    """The store holding a budget cannot be reached; the retry is allowed (fail open)."""


class BudgetState(Protocol):
    """One budget's counts. Every method but ``add_successes`` may raise
    :class:`BudgetUnavailableError`."""

    def add_successes(self, count: int) -> bool:
        """Count ``count`` successes; True when the store asks to be flushed now."""

    def spend(self) -> BudgetReply:
        """Admit and count one retry, or refuse it."""

    def read(self) -> BudgetReply:
        """The window's counts now, admitting nothing."""

    def flush(self) -> None:
        """Send the successes counted and not yet stored (nothing to do in memory)."""

    def due(self) -> bool:
        """Whether successes have waited long enough to be flushed."""


class LocalBudgetState:
    """A budget in this process's memory, for embedded runs (one process, no Redis).

    Parameters:
      config: The budget's settings.
    """

    def __init__(self, config: RetryBudgetConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._successes: dict[int, int] = {}
        self._retries: dict[int, int] = {}

    def add_successes(self, count: int) -> bool:
        with self._lock:
            current = self._bucket()
            self._successes[current] = self._successes.get(current, 0) + count
        return False

    def spend(self) -> BudgetReply:
        return self._count(spend=True)

    def read(self) -> BudgetReply:
        return self._count(spend=False)

    def flush(self) -> None:
        return None

    def due(self) -> bool:
        return False

    def _bucket(self) -> int:
        return int(time.monotonic() * 1000) // self._config.bucket

    def _count(self, *, spend: bool) -> BudgetReply:
        config = self._config
        with self._lock:
            now = time.monotonic() * 1000
            current = int(now) // config.bucket
            oldest = current - BUCKETS
            for counts in (self._successes, self._retries):
                for stale in [b for b in counts if b < oldest]:
                    del counts[stale]
            allowance = config.allowance(sum(self._successes.values()))
            retries = sum(self._retries.values())
            admitted = spend and retries + 1 <= allowance
            if admitted:
                retries += 1
                self._retries[current] = self._retries.get(current, 0) + 1
            first = min(self._retries, default=None)
            wait = 0 if first is None else max(1, (first + BUCKETS + 1) * config.bucket - int(now))
            return BudgetReply(admitted, retries, allowance, wait)
