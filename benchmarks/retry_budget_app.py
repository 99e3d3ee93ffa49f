"""The worker module of retry_budget.py: ``dramatiq retry_budget_app`` (from benchmarks/).

Its actor ``call`` stands for a call to a downstream service: it takes ``BUDGET_CALL_MS``
and fails (ConnectionError) when the key ``{BUDGET_RUN}:down`` is set in Redis as it
starts. Each
call is counted in ``{BUDGET_RUN}:{up|down}:{first|retry}``, by whether the service was
down and whether the message was a retry; a success adds the message to
``{BUDGET_RUN}:done``. ``BUDGET_CONFIG`` is the retry budget as JSON (``null``: none).
"""

from __future__ import annotations

import json
import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from dramatiq_shared import setup_broker

URL = os.environ["BUDGET_REDIS_URL"]
RUN = os.environ["BUDGET_RUN"]
CALL = int(os.environ.get("BUDGET_CALL_MS", "10")) / 1000

broker = RedisBroker(url=URL, namespace=f"{RUN}-dq")
broker.add_middleware(CurrentMessage())
setup_broker(
    broker,
    retry={
        "maxAttempts": int(os.environ.get("BUDGET_ATTEMPTS", "4")),
        "baseDelay": 100,
        "maxDelay": 1_000,
        "budget": json.loads(os.environ.get("BUDGET_CONFIG") or "null"),
    },
    database=f"sqlite:///{os.environ['BUDGET_DIR']}/{os.getpid()}.db",
    redis_url=URL,
    namespace=RUN,
    max_deaths=None,
)
service = redis.Redis.from_url(URL)


@dramatiq.actor
def call(n: int) -> None:
    message = CurrentMessage.get_current_message()
    kind = "retry" if message is not None and message.options.get("retries") else "first"
    down = service.exists(f"{RUN}:down")  # as the call starts: the budget admitted it now
    time.sleep(CALL)
    service.incr(f"{RUN}:{'down' if down else 'up'}:{kind}")
    if down:
        raise ConnectionError("the service is down")
    service.sadd(f"{RUN}:done", n)
