"""Breakers' cached view: a healthy breaker asks Redis nothing, and hears of changes at once."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from dramatiq_shared import CircuitBreakerConfig, CircuitOpenError
from dramatiq_shared.breakers import Breakers
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
