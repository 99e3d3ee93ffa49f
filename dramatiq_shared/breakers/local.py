"""Breaker state in this process, for embedded runs without Redis.

The transitions of :mod:`dramatiq_shared.breakers.redis_state`'s Lua scripts, taken under a
lock instead of inside Redis, with the same replies (one table of cases tests both).
Shared by the threads of one process only: with several worker processes, use Redis.
It exists because an embedded run (StubBroker, no Redis) still needs working breakers.
"""

from __future__ import annotations

import threading
import time

from ..config import CircuitBreakerConfig
from .state import Counts, Reply, Snapshot
from .window import FAILED, SLOW, Window, outcome, over_threshold

__all__ = ["LocalState"]


def _now() -> int:
    return int(time.time() * 1000)


class LocalState:
    """One breaker's state in memory: the fields of the Redis hash, and the trial leases.

    Parameters:
      config: The breaker's settings.
    """

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._rates = config.counts_rates
        self._lock = threading.Lock()
        self._state = "closed"
        self._failures = 0
        self._successes = 0
        self._open_until = 0
        self._reopens = 0
        self._leases: dict[str, float] = {}  # token -> expiry (monotonic seconds)
        self._window = Window(config)
        self._trials = [0, 0, 0]  # counting rates: judged trials, failed, slow

    # --- the transitions, each under the lock --------------------------------------

    def acquire(self, token: str) -> Reply:
        config = self._config
        with self._lock:
            if self._state == "closed":
                return Reply("closed", self._failures)
            moved = ""
            if self._state == "open":
                wait = self._remaining()
                if wait > 0:
                    return Reply("open", wait)
                self._half_open()
                moved = "open"
            leases = self._held()
            taken = len(leases) + (self._trials[0] if self._rates else 0)
            if taken < config.half_open_calls:
                leases[token] = time.monotonic() + config.trial_timeout / 1000
                return Reply("trial", 0, moved)
            first = min(leases.values(), default=None)
            wait = config.reset_timeout
            if first is not None:
                wait = round((first - time.monotonic()) * 1000)
            return Reply("busy", max(0, min(wait, config.reset_timeout)), moved)

    def record_failure(self, token: str | None, *, slow: bool = False) -> Reply:
        config = self._config
        with self._lock:
            if self._rates:
                return self._record(outcome(failed=True, slow=slow), token)
            if self._state == "closed":
                self._failures += 1
                if self._failures < config.failure_threshold:
                    return Reply("closed", self._failures)
                self._open(config.reset_timeout, 0)
                return Reply("open", config.reset_timeout, "closed")
            if self._state == "half-open" and self._holds_trial(token):
                return self._reopen()
            return self._unmoved()

    def record_success(self, token: str | None, *, slow: bool = False) -> Reply:
        with self._lock:
            if self._rates:
                return self._record(outcome(failed=False, slow=slow), token)
            if self._state == "closed":
                self._failures = 0
                return Reply("closed")
            if self._state == "half-open" and self._holds_trial(token):
                del self._leases[token or ""]
                self._successes += 1
                if self._successes >= self._config.success_threshold:
                    self._close()
                    return Reply("closed", 0, "half-open")
                return Reply("half-open")
            return self._unmoved()

    def release(self, token: str) -> None:
        with self._lock:
            if self._holds_trial(token):
                del self._leases[token]

    def read(self) -> Snapshot:
        with self._lock:
            wait = self._remaining() if self._state == "open" else 0
            if self._rates:
                calls, failures, slow = self._window.counts(_now())
            else:
                calls, failures, slow = 0, self._failures, 0
            return Snapshot(self._state, failures, self._successes, wait, calls, slow)

    def force(self, state: str) -> Reply:
        with self._lock:
            before = self._state
            if state == "open":
                self._open(self._config.reset_timeout, 0)
            elif state == "closed":
                self._close()
            else:
                self._leases.clear()
                self._half_open()
            wait = self._config.reset_timeout if state == "open" else 0
            return Reply(state, wait, before if before != state else "")

    # --- counting rates: one outcome into the window, or a trial's into the verdict ---

    def _record(self, code: str, token: str | None) -> Reply:
        config = self._config
        if self._state == "closed":
            counts = self._window.add(code, _now())
            if not over_threshold(config, counts, config.window_minimum):
                self._failures = counts.failed
                return Reply("closed", counts.failed, "", counts)
            self._open(config.reset_timeout, 0)
            return Reply("open", config.reset_timeout, "closed", counts)
        if self._state == "half-open" and self._holds_trial(token):
            del self._leases[token or ""]
            trials = self._trials
            trials[0] += 1
            trials[1] += code in FAILED
            trials[2] += code in SLOW
            self._successes += code not in FAILED
            if trials[0] < config.half_open_calls:
                return Reply("half-open")
            if over_threshold(config, Counts(*trials), config.half_open_calls):
                return self._reopen()
            self._close()
            return Reply("closed", 0, "half-open")
        return self._unmoved()

    # --- the steps the transitions share, as the Lua prelude's functions -------------

    def _reopen(self) -> Reply:
        config = self._config
        reopens = self._reopens + 1
        ceiling = config.max_reset_timeout or config.reset_timeout
        timeout = min(ceiling, config.reset_timeout * 2**reopens)
        self._open(timeout, reopens)
        return Reply("open", timeout, "half-open")

    def _unmoved(self) -> Reply:
        # An outcome that moves nothing: the breaker is open, or half-open and the
        # call was not one of its trials.
        if self._state == "open":
            return Reply("open", self._remaining())
        return Reply("half-open")

    def _remaining(self) -> int:
        return max(0, self._open_until - _now())

    def _open(self, timeout: int, reopens: int) -> None:
        self._state, self._failures, self._successes = "open", 0, 0
        self._open_until, self._reopens = _now() + timeout, reopens
        self._fresh()

    def _close(self) -> None:
        self._state, self._failures, self._successes, self._reopens = "closed", 0, 0, 0
        self._fresh()

    def _half_open(self) -> None:
        self._state, self._successes = "half-open", 0
        self._trials = [0, 0, 0]

    def _fresh(self) -> None:
        self._leases.clear()
        self._window.clear()
        self._trials = [0, 0, 0]

    def _held(self) -> dict[str, float]:
        now = time.monotonic()
        for token in [t for t, expiry in self._leases.items() if expiry <= now]:
            del self._leases[token]
        return self._leases

    def _holds_trial(self, token: str | None) -> bool:
        return bool(token) and token in self._held()
