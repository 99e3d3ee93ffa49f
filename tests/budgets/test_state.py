"""One table of cases for both retry budget stores: Redis's Lua script and the local twin;
then what only the Redis store does: batching successes, sharing, failing open."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dramatiq_shared.budgets import Budgets, BudgetUnavailableError
from dramatiq_shared.budgets.redis_state import FLUSH_AFTER, FLUSH_COUNT, RedisBudgetState
from dramatiq_shared.budgets.state import BudgetReply, BudgetState, LocalBudgetState
from dramatiq_shared.config import RetryBudgetConfig
from dramatiq_shared.keys import Keys
from tests.breakers.test_state import within

# 2 retries a window without successes, half a retry a success; buckets of 100 ms.
CONFIG = RetryBudgetConfig(ratio=0.5, minimum=2, window=1_000)
LEFT = within(1_000, 1_100)  # the oldest retry leaves the window 10 to 11 buckets on

Step = tuple[str, Any, Any]  # operation, its argument (successes or ms), the reply

CASES: dict[str, list[Step]] = {
    "without successes the minimum admits minimum x seconds retries": [
        ("spend", None, BudgetReply(True, 1, 2.0, LEFT)),
        ("spend", None, BudgetReply(True, 2, 2.0, LEFT)),
        ("spend", None, BudgetReply(False, 2, 2.0, LEFT)),
    ],
    "each success raises the allowance by the ratio": [
        ("success", 4, None),
        ("read", None, BudgetReply(False, 0, 4.0, 0)),
        ("spend", None, BudgetReply(True, 1, 4.0, LEFT)),
        ("success", 1, None),
        ("spend", None, BudgetReply(True, 2, 4.5, LEFT)),
        ("spend", None, BudgetReply(True, 3, 4.5, LEFT)),
        ("spend", None, BudgetReply(True, 4, 4.5, LEFT)),
        ("spend", None, BudgetReply(False, 4, 4.5, LEFT)),
    ],
    "a read admits and counts nothing": [
        ("read", None, BudgetReply(False, 0, 2.0, 0)),
        ("read", None, BudgetReply(False, 0, 2.0, 0)),
        ("spend", None, BudgetReply(True, 1, 2.0, LEFT)),
    ],
    "retries leave the window a window later, and admit as many again": [
        ("spend", None, BudgetReply(True, 1, 2.0, LEFT)),
        ("spend", None, BudgetReply(True, 2, 2.0, LEFT)),
        ("spend", None, BudgetReply(False, 2, 2.0, LEFT)),
        ("sleep", 1_150, None),
        ("read", None, BudgetReply(False, 0, 2.0, 0)),
        ("spend", None, BudgetReply(True, 1, 2.0, LEFT)),
    ],
    "successes leave the window too": [
        ("success", 10, None),
        ("read", None, BudgetReply(False, 0, 7.0, 0)),
        ("sleep", 1_150, None),
        ("read", None, BudgetReply(False, 0, 2.0, 0)),
    ],
    "a refusal waits for the oldest counted retry to leave the window": [
        ("spend", None, BudgetReply(True, 1, 2.0, LEFT)),
        ("sleep", 300, None),
        ("spend", None, BudgetReply(True, 2, 2.0, within(700, 800))),
        ("spend", None, BudgetReply(False, 2, 2.0, within(700, 800))),
    ],
}


@pytest.fixture
def new_redis_state(redis_client: redis.Redis) -> Callable[[], RedisBudgetState]:
    """Redis stores of one budget of the test's own, as many processes would hold it."""
    name = f"budget-{uuid.uuid4().hex[:8]}"
    return lambda: RedisBudgetState(redis_client, name, CONFIG, Keys("test"))


@pytest.fixture(params=["redis", "local"])
def state(request: pytest.FixtureRequest) -> BudgetState:
    if request.param == "local":
        return LocalBudgetState(CONFIG)
    made: BudgetState = request.getfixturevalue("new_redis_state")()
    return made


def _start_of_a_bucket() -> None:
    """Wait for a fresh bucket, so a case's quick steps all fall in one."""
    time.sleep((CONFIG.bucket - (time.time() * 1000) % CONFIG.bucket) / 1000 + 0.005)


@pytest.mark.parametrize("case", list(CASES))
def test_both_stores_answer_the_same(case: str, state: BudgetState) -> None:
    _start_of_a_bucket()
    for operation, argument, expected in CASES[case]:
        if operation == "sleep":
            time.sleep(argument / 1000)
        elif operation == "success":
            state.add_successes(argument)
        else:
            reply = state.spend() if operation == "spend" else state.read()
            assert reply == expected, f"{case}: {operation}"


def test_tokens_are_the_retries_the_budget_would_admit_now() -> None:
    assert BudgetReply(False, 3, 4.5, 0).tokens == 1
    assert BudgetReply(False, 5, 4.5, 0).tokens == 0


def test_processes_sharing_a_budget_never_admit_more_than_it_allows(
    new_redis_state: Callable[[], RedisBudgetState],
) -> None:
    states = [new_redis_state() for _ in range(4)]
    states[0].add_successes(20)  # 0.5 x 20 + 2 = 12 retries in the window
    admitted: list[bool] = []

    def spend(state: RedisBudgetState) -> None:
        admitted.extend(state.spend().admitted for _ in range(10))

    threads = [threading.Thread(target=spend, args=(s,)) for s in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 12


def test_successes_wait_in_the_process_until_a_hundred_or_a_second_old(
    new_redis_state: Callable[[], RedisBudgetState],
) -> None:
    mine, other = new_redis_state(), new_redis_state()
    assert [mine.add_successes(1) for _ in range(FLUSH_COUNT - 1)] == [False] * (FLUSH_COUNT - 1)
    assert other.read().allowance == 2.0  # not sent yet
    assert mine.add_successes(1)  # the hundredth asks to be sent now
    mine.flush()
    assert other.read().allowance == 2.0 + 0.5 * FLUSH_COUNT
    mine.add_successes(1)
    assert not mine.due()
    time.sleep(FLUSH_AFTER)
    assert mine.due()


def test_the_thread_sends_a_waiting_success_within_its_staleness_bound(
    redis_client: redis.Redis,
) -> None:
    budgets = Budgets(redis_client, CONFIG, namespace=f"test-{uuid.uuid4().hex[:8]}")
    other = Budgets(redis_client, CONFIG, namespace=budgets._keys.namespace)
    try:
        budgets.succeeded("api")
        started = time.monotonic()
        while other["api"].read().allowance == 2.0:
            assert time.monotonic() - started < FLUSH_AFTER + 0.3, "the success was not sent"
            time.sleep(0.02)
        assert time.monotonic() - started >= FLUSH_AFTER - 0.1  # batched, not sent at once
    finally:
        budgets.close()
        other.close()


def test_a_spend_sends_the_waiting_successes_in_the_same_call(
    new_redis_state: Callable[[], RedisBudgetState], redis_client: redis.Redis
) -> None:
    state = new_redis_state()
    state.spend()  # loads the script
    state.add_successes(6)
    before = int(redis_client.info("stats")["total_commands_processed"])
    assert state.spend() == BudgetReply(True, 2, 5.0, LEFT)
    # One EVALSHA (TIME, HINCRBY and HGETALL inside it, at most PEXPIRE and HDEL too).
    spent = int(redis_client.info("stats")["total_commands_processed"]) - before - 1
    assert 4 <= spent <= 7


def test_the_key_keeps_only_the_window_and_expires_after_two_windows(
    new_redis_state: Callable[[], RedisBudgetState], redis_client: redis.Redis
) -> None:
    state = new_redis_state()
    state.add_successes(1)
    state.flush()
    state.spend()
    key = state._key
    time.sleep(1.25)
    state.add_successes(1)
    state.flush()
    fields = redis_client.hkeys(key)
    assert [field[:1] for field in fields] == [b"s"]  # the old buckets were dropped
    assert 0 < redis_client.pttl(key) <= 2 * CONFIG.window


@pytest.fixture
def unreachable() -> Iterator[redis.Redis]:
    client = redis.Redis(port=1, socket_connect_timeout=0.2)
    yield client
    client.close()


def test_an_unreachable_redis_lets_the_retry_run_and_is_logged_once(
    unreachable: redis.Redis, records: list[dict[str, Any]]
) -> None:
    budgets = Budgets(unreachable, CONFIG)
    try:
        assert budgets.spend("api") is None  # fail open
        assert budgets.spend("api") is None  # not asked again within the second
        budgets.succeeded("api")
        budgets.flush()  # dropped, not raised
        with pytest.raises(BudgetUnavailableError):
            budgets["api"].read()
    finally:
        budgets.close()
    warnings = [r for r in records if "Retry budgets cannot reach Redis" in r["message"]]
    assert len(warnings) == 1
