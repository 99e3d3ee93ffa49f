"""One table of cases for every breaker state store: Redis's Lua scripts and the local twin.

Each case is a sequence of operations with the reply each must give; the same table runs
against both stores, so they cannot drift apart.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from dramatiq_shared import CircuitBreakerConfig
from dramatiq_shared.breakers.local import LocalState
from dramatiq_shared.breakers.redis_state import RedisState
from dramatiq_shared.breakers.state import BreakerState, Reply, Snapshot

CONFIG = CircuitBreakerConfig(
    failure_threshold=2,
    reset_timeout=100,
    max_reset_timeout=250,
    success_threshold=2,
    trial_timeout=300,
)


class _Within:
    """Equal to any int from ``low`` to ``high``: a time left, which the clock moves."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and self.low <= other <= self.high

    __hash__ = None  # type: ignore[assignment]  # equal to many ints: unhashable

    def __repr__(self) -> str:
        return f"within({self.low}, {self.high})"


def within(low: int, high: int) -> Any:
    """Stands for an int in a reply (typed Any, so the table reads as plain replies)."""
    return _Within(low, high)


OPEN = within(1, 100)  # refused while open for reset_timeout
Step = tuple[str, Any, Any]  # operation, its argument (a token, ms or a state), the reply

CASES: dict[str, list[Step]] = {
    "opens at the threshold and refuses calls": [
        ("acquire", "a", Reply("closed", 0)),
        ("failure", None, Reply("closed", 1)),
        ("acquire", "a", Reply("closed", 1)),
        ("failure", None, Reply("open", 100, "closed")),
        ("acquire", "a", Reply("open", OPEN)),
        ("read", None, Snapshot("open", 0, 0, OPEN)),
    ],
    "a success resets the count": [
        ("failure", None, Reply("closed", 1)),
        ("success", None, Reply("closed", 0)),
        ("failure", None, Reply("closed", 1)),
        ("read", None, Snapshot("closed", 1, 0, 0)),
    ],
    "a failure while open is not counted": [
        ("failure", None, Reply("closed", 1)),
        ("failure", None, Reply("open", 100, "closed")),
        ("failure", None, Reply("open", OPEN)),
        ("success", None, Reply("open", OPEN)),
        ("read", None, Snapshot("open", 0, 0, OPEN)),
    ],
    "half-open runs one trial; only its outcome counts; two successes close": [
        ("force", "open", Reply("open", 100, "closed")),
        ("sleep", 110, None),
        ("acquire", "a", Reply("trial", 0, "open")),
        ("acquire", "b", Reply("busy", OPEN)),  # the lease's rest, at most reset_timeout
        ("failure", "b", Reply("half-open")),  # not the trial: ignored
        ("success", "b", Reply("half-open")),
        ("success", "a", Reply("half-open")),  # one of two
        ("read", None, Snapshot("half-open", 0, 1, 0)),
        ("acquire", "b", Reply("trial")),
        ("success", "b", Reply("closed", 0, "half-open")),
        ("read", None, Snapshot("closed", 0, 0, 0)),
    ],
    "a failed trial re-opens for twice as long, up to the cap": [
        ("force", "open", Reply("open", 100, "closed")),
        ("sleep", 110, None),
        ("acquire", "a", Reply("trial", 0, "open")),
        ("failure", "a", Reply("open", 200, "half-open")),
        ("acquire", "b", Reply("open", within(101, 200))),
        ("sleep", 210, None),
        ("acquire", "b", Reply("trial", 0, "open")),
        ("failure", "b", Reply("open", 250, "half-open")),  # 400, capped
    ],
    "a released or expired lease lets the next caller try": [
        ("force", "half-open", Reply("half-open", 0, "closed")),
        ("acquire", "a", Reply("trial")),
        ("release", "b", None),  # not its lease: nothing happens
        ("acquire", "b", Reply("busy", OPEN)),
        ("release", "a", None),
        ("acquire", "b", Reply("trial")),
        ("sleep", 310, None),  # b's worker died: the lease expires
        ("acquire", "c", Reply("trial")),
        ("success", "b", Reply("half-open")),  # too late: c holds the trial
        ("read", None, Snapshot("half-open", 0, 0, 0)),
    ],
    "forcing a state starts it afresh": [
        ("failure", None, Reply("closed", 1)),
        ("force", "open", Reply("open", 100, "closed")),
        ("force", "half-open", Reply("half-open", 0, "open")),
        ("acquire", "a", Reply("trial")),
        ("force", "closed", Reply("closed", 0, "half-open")),
        ("failure", "a", Reply("closed", 1)),  # the old trial's outcome counts as any call's
        ("force", "closed", Reply("closed")),  # no move
        ("read", None, Snapshot("closed", 0, 0, 0)),
    ],
}


@pytest.fixture(params=["redis_client", "local"], ids=["redis", "local"])
def state(request: pytest.FixtureRequest) -> BreakerState:
    if request.param == "local":
        return LocalState(CONFIG)
    client: redis.Redis = request.getfixturevalue("redis_client")
    return RedisState(client, "svc", CONFIG)


def apply(state: BreakerState, operation: str, argument: Any) -> Any:
    if operation == "sleep":
        time.sleep(argument / 1000)
        return None
    if operation == "release":
        state.release(argument)
        return None
    method = {
        "acquire": state.acquire,
        "failure": state.record_failure,
        "success": state.record_success,
        "force": state.force,
    }.get(operation)
    return state.read() if method is None else method(argument)


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_the_store_replies_as_the_table_says(state: BreakerState, steps: list[Step]) -> None:
    for number, (operation, argument, expected) in enumerate(steps):
        reply = apply(state, operation, argument)
        assert reply == expected, f"step {number}: {operation}({argument!r})"
