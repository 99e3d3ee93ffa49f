"""Breaker state in this process, for embedded runs without Redis.

The same transitions as the Lua scripts of :mod:`dramatiq_shared.breakers`, taken
under a lock instead of inside Redis, with the same replies, so
:class:`~dramatiq_shared.breakers.SharedCircuitBreaker` runs unchanged on either.
Shared by the threads of one process only: with several worker processes, use Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import pybreaker

from .config import CircuitBreakerConfig

__all__ = ["LocalState", "local_scripts"]

Script = Callable[..., list[Any]]


def _now() -> int:
    return int(time.time() * 1000)


class LocalState(pybreaker.CircuitBreakerStorage):
    """One breaker's state: the fields of the Redis hash, and the trial lease."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        super().__init__("memory")
        self.lock = threading.Lock()
        self.fields: dict[str, int | str] = {"state": "closed", "failures": 0, "successes": 0}
        self.lease: tuple[str, float] | None = None  # token, expiry (monotonic seconds)
        self._config = config

    def lease_holder(self) -> str | None:
        if self.lease is not None and self.lease[1] <= time.monotonic():
            self.lease = None
        return self.lease[0] if self.lease else None

    @property
    def state(self) -> str:
        return str(self.fields["state"])

    @state.setter
    def state(self, state: str) -> None:
        with self.lock:
            self.fields.update(state=state, successes=0)
            if state == "open":
                now = _now()
                self.fields.update(opened_at=now, open_until=now + self._config.reset_timeout)
            elif state == "closed":
                self.fields.update(failures=0, reopens=0)

    def increment_counter(self) -> None:
        with self.lock:
            self.fields["failures"] = int(self.fields["failures"]) + 1

    def reset_counter(self) -> None:
        self.fields["failures"] = 0

    def increment_success_counter(self) -> None:
        with self.lock:
            self.fields["successes"] = int(self.fields["successes"]) + 1

    def reset_success_counter(self) -> None:
        self.fields["successes"] = 0

    @property
    def counter(self) -> int:
        return int(self.fields["failures"])

    @property
    def success_counter(self) -> int:
        return int(self.fields["successes"])

    @property
    def opened_at(self) -> datetime | None:
        value = self.fields.get("opened_at")
        return datetime.fromtimestamp(int(value) / 1000, timezone.utc) if value else None

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self.fields["opened_at"] = int(when.timestamp() * 1000)


def local_scripts(state: LocalState) -> dict[str, Script]:
    """The four scripts, over ``state``, called as Redis scripts are: ``(keys=, args=)``."""
    fields = state.fields

    def acquire(keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        _, token, lease_ttl, reset_timeout, _ = args
        with state.lock:
            if fields["state"] == "closed":
                return ["closed", fields["failures"]]
            moved = 0
            if fields["state"] == "open":
                remaining = int(fields.get("open_until", 0)) - _now()
                if remaining > 0:
                    return ["open", remaining]
                fields.update(state="half-open", successes=0)
                moved = 1
            if state.lease_holder() is None:
                state.lease = (token, time.monotonic() + int(lease_ttl) / 1000)
                return ["trial", moved]
            wait = round((state.lease[1] - time.monotonic()) * 1000) if state.lease else 0
            return ["busy", max(0, min(wait, int(reset_timeout)))]

    def failure(keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        _, token, threshold, reset_timeout, max_reset, _ = args
        with state.lock:
            if fields["state"] == "closed":
                fields["failures"] = int(fields["failures"]) + 1
                if int(fields["failures"]) < int(threshold):
                    return ["closed", fields["failures"]]
                now = _now()
                fields.update(
                    state="open",
                    failures=0,
                    successes=0,
                    opened_at=now,
                    open_until=now + int(reset_timeout),
                    reopens=0,
                )
                return ["opened", int(reset_timeout)]
            if fields["state"] == "half-open" and token and state.lease_holder() == token:
                reopens = int(fields.get("reopens", 0)) + 1
                timeout = min(int(max_reset), int(reset_timeout) * 2**reopens)
                now = _now()
                fields.update(
                    state="open",
                    successes=0,
                    opened_at=now,
                    open_until=now + timeout,
                    reopens=reopens,
                )
                state.lease = None
                return ["opened", timeout]
            if fields["state"] == "open":
                return ["open", max(0, int(fields.get("open_until", 0)) - _now())]
            return [fields["state"], 0]

    def success(keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        _, token, threshold, _ = args
        with state.lock:
            if fields["state"] == "closed":
                fields["failures"] = 0
                return ["closed", 0]
            if fields["state"] == "half-open" and token and state.lease_holder() == token:
                state.lease = None
                fields["successes"] = int(fields["successes"]) + 1
                if int(fields["successes"]) >= int(threshold):
                    fields.update(state="closed", failures=0, successes=0, reopens=0)
                    return ["closed", 1]
                return ["half-open", 0]
            return [fields["state"], 0]

    def release(keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        with state.lock:
            if state.lease_holder() == args[0]:
                state.lease = None
                return [1]
            return [0]

    return {"acquire": acquire, "failure": failure, "success": success, "release": release}
