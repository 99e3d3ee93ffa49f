"""A worker module for the circuit-breaker test: ``dramatiq tests.middleware.breaker_app``.

Its actor fetches an item from the test's HTTP service (``SERVICE_URL``) through the
"nutrition" breaker and adds it to the Redis set ``DONE_KEY`` (on ``TEST_REDIS_URL``)
once fetched. ``BREAKER_CONFIG``, a JSON mapping, replaces the breaker's settings.
"""

from __future__ import annotations

import json
import os
import urllib.request

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries

from dramatiq_shared import CircuitBreakerConfig, RetryConfig
from dramatiq_shared.middleware import CircuitBreaker, ErrorHandling, Retry

REDIS_URL = os.environ["TEST_REDIS_URL"]
SERVICE_URL = os.environ["SERVICE_URL"]
DONE = os.environ["DONE_KEY"]

CONFIG = (
    CircuitBreakerConfig.from_mapping(json.loads(os.environ["BREAKER_CONFIG"]))
    if os.environ.get("BREAKER_CONFIG")
    else CircuitBreakerConfig(failure_threshold=5, reset_timeout=1_500, trial_timeout=5_000)
)

broker = RedisBroker(url=REDIS_URL)
broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, Retries)]
broker.add_middleware(
    CircuitBreaker(
        redis_url=REDIS_URL,
        breakers={"nutrition": CONFIG},
        jitter=300,
    )
)
broker.add_middleware(Retry(config=RetryConfig(max_attempts=3, base_delay=100, max_delay=400)))
broker.add_middleware(ErrorHandling())
dramatiq.set_broker(broker)
results = redis.Redis.from_url(REDIS_URL)


@dramatiq.actor(breaker="nutrition")
def enrich(item: int) -> None:
    with urllib.request.urlopen(f"{SERVICE_URL}/items/{item}", timeout=5) as response:
        response.read()
    results.sadd(DONE, item)
