"""Breakers' cached view: a healthy breaker asks Redis nothing, and hears of changes at once."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from dramatiq_shared import CircuitBreakerConfig, CircuitOpenError
from dramatiq_shared.breakers import Breakers, SharedCircuitBreaker
from dramatiq_shared.breakers.cache import CachedState, View
from dramatiq_shared.breakers.redis_state import RedisState
from dramatiq_shared.breakers.state import Counts, StateUnavailableError
from dramatiq_shared.keys import Keys
from tests.conftest import redis_commands

from .test_breakers import TRIAL_SCRIPT, fail


def test_1000_calls_through_a_healthy_breaker_cost_at_most_50_commands(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, _, _ = private_redis  # a server of the test's own: nobody else's commands
    breakers = Breakers(client)
    try:
        before = redis_commands(client)
        cb = breakers["svc"]
        for _ in range(1_000):
            cb.call(lambda: None)
        spent = redis_commands(client) - before - 1  # less the first INFO
        print(f"Redis commands for 1,000 calls through a healthy breaker: {spent}")
        assert spent <= 50
    finally:
        breakers.close()


def test_a_breaker_opened_elsewhere_refuses_calls_within_50_ms(
    redis_client: redis.Redis, redis_url: str
) -> None:
    watcher = subprocess.Popen(
        [sys.executable, str(TRIAL_SCRIPT), redis_url, "watch", "1", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    breakers = Breakers(redis_client, default=CircuitBreakerConfig(failure_threshold=1))
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready", watcher.stderr
        opened_at = time.time()  # before the failure's round trip: an upper bound
        fail(breakers["svc"])
        refused_at = float(watcher.stdout.readline())
        print(f"the other process refused calls {1000 * (refused_at - opened_at):.1f} ms after")
        assert refused_at - opened_at < 0.05
    finally:
        watcher.kill()
        watcher.wait()
        breakers.close()


def test_a_lost_subscription_makes_calls_ask_redis(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, _, _ = private_redis
    config = CircuitBreakerConfig(failure_threshold=1)
    watched = Breakers(client)
    other = Breakers(client, default=config)
    try:
        cb = watched["svc"]
        cb.call(lambda: None)
        time.sleep(0.3)  # subscribed, and the breaker known healthy
        client.client_kill_filter(_type="pubsub")
        time.sleep(0.05)
        other["svc"].open()  # no subscriber hears of it
        with pytest.raises(CircuitOpenError):
            cb.call(lambda: None)
    finally:
        watched.close()
        other.close()


def test_a_failure_costs_a_few_commands_not_one_for_every_call_after_it(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, _, _ = private_redis
    breakers = Breakers(client, default=CircuitBreakerConfig(failure_threshold=3))
    try:
        cb = breakers["svc"]
        cb.call(lambda: None)
        time.sleep(0.3)  # subscribed, and the breaker known closed

        def failure_then(successes: int) -> int:
            before = redis_commands(client)
            fail(cb)
            time.sleep(0.01)  # the failure's message reaches the view
            # Calls in flight together, as on a worker's threads: all let through
            # while the breaker counts the failure, all succeeding.
            tickets = [cb.acquire() for _ in range(successes)]
            for ticket in tickets:
                cb.record_success(ticket)
            return redis_commands(client) - before - 1  # less the first INFO

        few = [failure_then(2) for _ in range(10)]
        many = [failure_then(50) for _ in range(10)]
        print(f"Redis commands for a failure and 2 successes: {few}; and 50: {many}")
        # The failure's report, the one acquire that learns of it and the one reset
        # (scripts' own commands included): the same however many calls follow.
        assert max(many) <= max(few)
        # The successes did reset the count: two failures in a row stay below 3.
        fail(cb)
        fail(cb)
        assert cb.current_state == "closed"
        fail(cb)
        assert cb.current_state == "open"
    finally:
        breakers.close()


def test_a_reset_that_did_not_reach_redis_is_made_by_the_next_success(
    redis_client: redis.Redis,
) -> None:
    view = View(redis_client)
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens there
    cached = CachedState("svc", RedisState(unreachable, "svc", CircuitBreakerConfig()), view)
    try:
        assert view.failures("svc") is None  # starts the subscriber
        deadline = time.monotonic() + 5
        while view.since("svc") == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)  # subscribed: the generation moved
        redis_client.publish(Keys().breaker_changes, "svc 1")  # a first failure elsewhere
        while view.failures("svc") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert view.failures("svc") == 1
        for _ in range(2):  # the second success does not take the first's reset as made
            with pytest.raises(StateUnavailableError):
                cached.record_success(None)
    finally:
        view.stop()


RATES = CircuitBreakerConfig(failure_rate_threshold=50, minimum_calls=10, window_size=1_000)


def window_calls(breaker: SharedCircuitBreaker) -> int:
    assert breaker.window is not None
    return breaker.window.calls


def test_a_rate_breakers_successes_reach_redis_together_within_a_second_or_200_calls(
    redis_client: redis.Redis,
) -> None:
    breakers = Breakers(redis_client, default=RATES)
    try:
        cb = breakers["svc"]
        cb.call(lambda: None)  # learns it is closed; its success waits
        time.sleep(0.3)  # subscribed
        for _ in range(9):
            cb.call(lambda: None)
        assert window_calls(cb) == 0  # ten successes waiting, none sent
        time.sleep(1.0)
        cb.call(lambda: None)  # the oldest waited a second: all eleven go
        assert window_calls(cb) == 11
        for _ in range(199):
            cb.call(lambda: None)
        assert window_calls(cb) == 11
        cb.call(lambda: None)  # the 200th waiting
        assert window_calls(cb) == 211
    finally:
        breakers.close()


def test_a_rate_breakers_failure_goes_at_once_with_the_successes_before_it(
    redis_client: redis.Redis,
) -> None:
    breakers = Breakers(redis_client, default=RATES)
    try:
        cb = breakers["svc"]
        for _ in range(5):
            cb.call(lambda: None)
        fail(cb)
        assert cb.window == Counts(6, 1, 0)
        for _ in range(4):
            fail(cb)  # 5 of 10: the failure that reaches the rate opens it, there and then
        assert cb.current_state == "open"
    finally:
        breakers.close()
