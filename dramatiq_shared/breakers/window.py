"""The sliding window of a breaker that counts rates, as this process keeps it.

A breaker configured with a ``failure_rate_threshold`` or a ``slow_call_duration``
judges the outcomes of its last calls (see
:class:`~dramatiq_shared.config.CircuitBreakerConfig`): a count window holds the last
``window_size`` outcomes, a time window those of the last ``window_size`` milliseconds in
10 buckets. The rule is the same in Redis's scripts
(:mod:`~dramatiq_shared.breakers.redis_state`), which keep the fleet's window, and here,
for :class:`~dramatiq_shared.breakers.local.LocalState`; the property tests hold both
to one reference model.

An outcome is one character, so that a batch of them travels to Redis as one string:
``s`` a success, ``f`` a failure, ``S`` and ``F`` the same when the call was slow.
"""

from __future__ import annotations

from collections import deque

from ..config import CircuitBreakerConfig
from ..config.breaker import TIME_BUCKETS
from .state import Counts

__all__ = ["Window", "outcome", "over_threshold"]

FAILED = frozenset("fF")
SLOW = frozenset("SF")


def outcome(*, failed: bool, slow: bool) -> str:
    """The character of one call's outcome."""
    return ("F" if slow else "f") if failed else ("S" if slow else "s")


def over_threshold(config: CircuitBreakerConfig, counts: Counts, minimum: int) -> bool:
    """Whether ``counts`` of at least ``minimum`` calls reach a rate threshold of ``config``."""
    calls = counts.calls
    if calls == 0 or calls < minimum:
        return False
    failure_rate, slow_rate = config.failure_rate_threshold, config.slow_call_rate_threshold
    # In integers where they can be: 100 * failed >= threshold * calls.
    return (failure_rate is not None and 100 * counts.failed >= failure_rate * calls) or (
        slow_rate is not None and 100 * counts.slow >= slow_rate * calls
    )


class Window:
    """The outcomes of a breaker's recent calls.

    Parameters:
      config: The breaker's settings: ``window`` and ``window_size``.
    """

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._calls: deque[str] = deque()  # count window: the outcomes, oldest first
        self._totals = [0, 0, 0]  # count window: calls, failed, slow
        self._buckets: dict[int, list[int]] = {}  # time window: bucket -> calls, failed, slow
        self._width = config.window_size // TIME_BUCKETS

    def add(self, code: str, now: int) -> Counts:
        """Add one outcome at ``now`` (milliseconds) and return the window's counts."""
        if self._config.window == "count":
            self._calls.append(code)
            self._count(code, 1)
            if len(self._calls) > self._config.window_size:
                self._count(self._calls.popleft(), -1)
        else:
            bucket = self._buckets.setdefault(now // self._width, [0, 0, 0])
            bucket[0] += 1
            bucket[1] += code in FAILED
            bucket[2] += code in SLOW
        return self.counts(now)

    def counts(self, now: int) -> Counts:
        """The window's counts at ``now`` (milliseconds)."""
        if self._config.window == "count":
            return Counts(*self._totals)
        oldest = now // self._width - TIME_BUCKETS + 1
        for stale in [b for b in self._buckets if b < oldest]:
            del self._buckets[stale]
        totals = [sum(column) for column in zip(*self._buckets.values(), strict=False)]
        return Counts(*totals) if totals else Counts()

    def clear(self) -> None:
        """Forget every outcome: the breaker moved."""
        self._calls.clear()
        self._totals = [0, 0, 0]
        self._buckets.clear()

    def _count(self, code: str, sign: int) -> None:
        totals = self._totals
        totals[0] += sign
        totals[1] += sign * (code in FAILED)
        totals[2] += sign * (code in SLOW)
