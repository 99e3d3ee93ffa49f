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
from dramatiq_shared.breakers.state import BreakerState, Counts, Reply, Snapshot

CONFIG = CircuitBreakerConfig(
    failure_threshold=2,
    reset_timeout=100,
    max_reset_timeout=250,
    success_threshold=2,
    trial_timeout=300,
)
# Counting rates: the last 4 calls, half of them failed or three quarters slow.
RATES = CircuitBreakerConfig(
    failure_rate_threshold=50,
    minimum_calls=4,
    window_size=4,
    slow_call_duration=10,
    slow_call_rate_threshold=75,
    reset_timeout=100,
    max_reset_timeout=250,
    trial_timeout=300,
    half_open_calls=2,
)
# The calls of the last 200 ms, in buckets of 20.
TIMED = CircuitBreakerConfig(
    window="time", window_size=200, failure_rate_threshold=50, minimum_calls=2
)
# Failures in a row, two trials at once.
TWO_TRIALS = CircuitBreakerConfig(
    failure_threshold=1, reset_timeout=100, success_threshold=2, half_open_calls=2
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


RATE_CASES: dict[str, tuple[CircuitBreakerConfig, list[Step]]] = {
    "counting rates, it opens when the failure rate reaches its threshold": (
        RATES,
        [
            ("failure", None, Reply("closed", 1, "", Counts(1, 1, 0))),
            ("success", None, Reply("closed", 1, "", Counts(2, 1, 0))),
            ("acquire", "a", Reply("closed", 1)),
            ("success", None, Reply("closed", 1, "", Counts(3, 1, 0))),
            ("read", None, Snapshot("closed", 1, 0, 0, 3, 0)),
            ("failure", None, Reply("open", 100, "closed", Counts(4, 2, 0))),
            ("acquire", "a", Reply("open", OPEN)),
            ("read", None, Snapshot("open", 0, 0, OPEN)),
        ],
    ),
    "a count window holds only the last calls": (
        RATES,
        [
            ("failure", None, Reply("closed", 1, "", Counts(1, 1, 0))),
            ("success", None, Reply("closed", 1, "", Counts(2, 1, 0))),
            ("success", None, Reply("closed", 1, "", Counts(3, 1, 0))),
            ("success", None, Reply("closed", 1, "", Counts(4, 1, 0))),
            ("success", None, Reply("closed", 0, "", Counts(4, 0, 0))),  # the failure left
            ("failure", None, Reply("closed", 1, "", Counts(4, 1, 0))),
            ("failure", None, Reply("open", 100, "closed", Counts(4, 2, 0))),
        ],
    ),
    "slow calls count against it, failed or not": (
        RATES,
        [
            ("slow success", None, Reply("closed", 0, "", Counts(1, 0, 1))),
            ("success", None, Reply("closed", 0, "", Counts(2, 0, 1))),
            ("slow success", None, Reply("closed", 0, "", Counts(3, 0, 2))),
            ("slow failure", None, Reply("open", 100, "closed", Counts(4, 1, 3))),
        ],
    ),
    "half-open lets exactly half_open_calls trials through; their rate re-opens it": (
        RATES,
        [
            ("force", "open", Reply("open", 100, "closed")),
            ("sleep", 110, None),
            ("acquire", "a", Reply("trial", 0, "open")),
            ("acquire", "b", Reply("trial")),
            ("acquire", "c", Reply("busy", within(1, 100))),
            ("success", "a", Reply("half-open")),
            ("success", None, Reply("half-open")),  # not a trial: ignored
            ("acquire", "c", Reply("busy", within(1, 100))),  # a's judged trial keeps its place
            ("read", None, Snapshot("half-open", 0, 1, 0)),
            ("failure", "b", Reply("open", 200, "half-open")),  # 1 of 2 failed: 50%
        ],
    ),
    "half-open trials under the thresholds close it": (
        RATES,
        [
            ("force", "half-open", Reply("half-open", 0, "closed")),
            ("acquire", "a", Reply("trial")),
            ("acquire", "b", Reply("trial")),
            ("success", "b", Reply("half-open")),
            ("slow success", "a", Reply("closed", 0, "half-open")),  # 50% slow: under 75
            ("read", None, Snapshot("closed", 0, 0, 0)),
        ],
    ),
    "an expired lease frees its place among the trials": (
        RATES,
        [
            ("force", "half-open", Reply("half-open", 0, "closed")),
            ("acquire", "a", Reply("trial")),
            ("acquire", "b", Reply("trial")),
            ("sleep", 310, None),  # both workers died
            ("acquire", "c", Reply("trial")),
            ("success", "a", Reply("half-open")),  # too late: ignored
            ("acquire", "d", Reply("trial")),
            ("acquire", "e", Reply("busy", within(1, 100))),
        ],
    ),
    "a time window forgets calls older than its size": (
        TIMED,
        [
            ("failure", None, Reply("closed", 1, "", Counts(1, 1, 0))),
            ("sleep", 250, None),
            ("success", None, Reply("closed", 0, "", Counts(1, 0, 0))),
            ("success", None, Reply("closed", 0, "", Counts(2, 0, 0))),
            ("failure", None, Reply("closed", 1, "", Counts(3, 1, 0))),
            ("failure", None, Reply("open", 60_000, "closed", Counts(4, 2, 0))),
        ],
    ),
    "counting failures in a row, half_open_calls trials run at once": (
        TWO_TRIALS,
        [
            ("force", "half-open", Reply("half-open", 0, "closed")),
            ("acquire", "a", Reply("trial")),
            ("acquire", "b", Reply("trial")),
            ("acquire", "c", Reply("busy", within(1, 100))),
            ("success", "a", Reply("half-open")),  # one of two; its place is free again
            ("acquire", "c", Reply("trial")),
            ("success", "b", Reply("closed", 0, "half-open")),
        ],
    ),
}


@pytest.fixture(params=["redis_client", "local"], ids=["redis", "local"])
def make_state(request: pytest.FixtureRequest) -> Any:
    """Makes a store of either kind for a config."""
    if request.param == "local":
        return LocalState
    client: redis.Redis = request.getfixturevalue("redis_client")
    return lambda config: RedisState(client, "svc", config)


@pytest.fixture
def state(make_state: Any) -> BreakerState:
    store: BreakerState = make_state(CONFIG)
    return store


def apply(state: BreakerState, operation: str, argument: Any) -> Any:
    if operation == "sleep":
        time.sleep(argument / 1000)
        return None
    if operation == "release":
        state.release(argument)
        return None
    if operation.startswith("slow "):
        record = state.record_failure if operation == "slow failure" else state.record_success
        return record(argument, slow=True)
    method = {
        "acquire": state.acquire,
        "failure": state.record_failure,
        "success": state.record_success,
        "force": state.force,
    }.get(operation)
    return state.read() if method is None else method(argument)


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_the_store_replies_as_the_table_says(state: BreakerState, steps: list[Step]) -> None:
    run(state, steps)


@pytest.mark.parametrize(("config", "steps"), RATE_CASES.values(), ids=RATE_CASES.keys())
def test_the_store_replies_as_the_table_says_with_other_settings(
    make_state: Any, config: CircuitBreakerConfig, steps: list[Step]
) -> None:
    run(make_state(config), steps)


def run(state: BreakerState, steps: list[Step]) -> None:
    for number, (operation, argument, expected) in enumerate(steps):
        reply = apply(state, operation, argument)
        assert reply == expected, f"step {number}: {operation}({argument!r}): {reply}"
