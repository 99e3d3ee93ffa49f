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
from .state import Reply, Snapshot

__all__ = ["LocalState"]


def _now() -> int:
    return int(time.time() * 1000)


class LocalState:
    """One breaker's state in memory: the fields of the Redis hash, and the trial lease.

    Parameters:
      config: The breaker's settings.
    """

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._state = "closed"
        self._failures = 0
        self._successes = 0
        self._open_until = 0
        self._reopens = 0
        self._lease: tuple[str, float] | None = None  # token, expiry (monotonic seconds)

    # --- the transitions, each under the lock --------------------------------------

    def acquire(self, token: str) -> Reply:
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
            holder = self._holder()
            if holder is None:
                self._lease = (token, time.monotonic() + self._config.trial_timeout / 1000)
                return Reply("trial", 0, moved)
            wait = round((holder[1] - time.monotonic()) * 1000)
            return Reply("busy", max(0, min(wait, self._config.reset_timeout)), moved)

    def record_failure(self, token: str | None) -> Reply:
        config = self._config
        with self._lock:
            if self._state == "closed":
                self._failures += 1
                if self._failures < config.failure_threshold:
                    return Reply("closed", self._failures)
                self._open(config.reset_timeout, 0)
                return Reply("open", config.reset_timeout, "closed")
            if self._state == "half-open" and self._holds_trial(token):
                reopens = self._reopens + 1
                ceiling = config.max_reset_timeout or config.reset_timeout
                timeout = min(ceiling, config.reset_timeout * 2**reopens)
                self._open(timeout, reopens)
                return Reply("open", timeout, "half-open")
            if self._state == "open":
                return Reply("open", self._remaining())
            return Reply("half-open")

    def record_success(self, token: str | None) -> Reply:
        with self._lock:
            if self._state == "closed":
                self._failures = 0
                return Reply("closed")
            if self._state == "half-open" and self._holds_trial(token):
                self._lease = None
                self._successes += 1
                if self._successes >= self._config.success_threshold:
                    self._close()
                    return Reply("closed", 0, "half-open")
                return Reply("half-open")
            if self._state == "open":
                return Reply("open", self._remaining())
            return Reply("half-open")

    def release(self, token: str) -> None:
        with self._lock:
            if self._holds_trial(token):
                self._lease = None

    def read(self) -> Snapshot:
        with self._lock:
            wait = self._remaining() if self._state == "open" else 0
            return Snapshot(self._state, self._failures, self._successes, wait)

    def force(self, state: str) -> Reply:
        with self._lock:
            before = self._state
            if state == "open":
                self._open(self._config.reset_timeout, 0)
            elif state == "closed":
                self._close()
            else:
                self._lease = None
                self._half_open()
            wait = self._config.reset_timeout if state == "open" else 0
            return Reply(state, wait, before if before != state else "")

    # --- the steps the transitions share, as the Lua prelude's functions -------------

    def _remaining(self) -> int:
        return max(0, self._open_until - _now())

    def _open(self, timeout: int, reopens: int) -> None:
        self._state, self._failures, self._successes = "open", 0, 0
        self._open_until, self._reopens = _now() + timeout, reopens
        self._lease = None

    def _close(self) -> None:
        self._state, self._failures, self._successes, self._reopens = "closed", 0, 0, 0
        self._lease = None

    def _half_open(self) -> None:
        self._state, self._successes = "half-open", 0

    def _holder(self) -> tuple[str, float] | None:
        if self._lease is not None and self._lease[1] <= time.monotonic():
            self._lease = None
        return self._lease

    def _holds_trial(self, token: str | None) -> bool:
        holder = self._holder()
        return bool(token) and holder is not None and holder[0] == token
