"""A worker process SIGKILLed mid-run: its messages come back, and no row is doubled."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from dramatiq_shared import RedisTransport
from dramatiq_shared.db.models import Note

from ..conftest import wait_until
from .synthetic import endings, executions, prepare, stored_event_ids, unpersisted, workers

pytestmark = pytest.mark.faults

MESSAGES = 10_000
IMPORT = "imp-kill"


def test_a_sigkilled_worker_loses_nothing_and_doubles_nothing(
    redis_client: redis.Redis, redis_url: str, postgres_url: str
) -> None:
    database = prepare(redis_url, postgres_url, IMPORT, MESSAGES)

    # The survivor persists what the victim streamed but never did, 2 s on.
    reclaim = {"DRAMATIQ_SHARED_STATUS_RECLAIM_AFTER": "2000"}
    try:
        with (
            workers(redis_url, postgres_url, processes=1, **reclaim) as victim,
            workers(redis_url, postgres_url, processes=1, **reclaim),
        ):
            deadline = time.monotonic() + 120
            wait_until(lambda: Note.select().count() >= MESSAGES // 3, deadline)
            os.killpg(victim.pid, signal.SIGKILL)  # mid-job: no clean-up of any kind
            killed_at = time.monotonic()
            in_flight = MESSAGES - Note.select().count()
            # What is still unpersisted half a second on is the victim's: the survivor
            # persists its own within broadcast_interval, and reclaims only after 2 s.
            at_kill = unpersisted(redis_client)
            time.sleep(0.5)
            left = sum(size for key, size in unpersisted(redis_client).items() if key in at_kill)
            done = wait_until(lambda: Note.select().count() == MESSAGES, deadline)
            recovered = time.monotonic() - killed_at
            assert done, "messages were lost"
            wait_until(lambda: endings(redis_client, IMPORT), deadline)
            last = RedisTransport(redis_client).read(IMPORT, limit=100_000)[-1]["id"]
            wait_until(lambda: len(stored_event_ids(database, IMPORT)) >= last, deadline)
            # The history has every streamed event, the victim's unpersisted ones too.
            assert stored_event_ids(database, IMPORT) == list(range(1, last + 1))
    finally:
        database.close_all()

    ran = executions(redis_client, IMPORT)
    assert set(ran) == set(range(MESSAGES))
    redelivered = sum(count - 1 for count in ran.values())
    assert endings(redis_client, IMPORT) == ["COMPLETED"]  # once, though some ran twice
    assert redis_client.zcard("dramatiq:default.XQ") == 0
    streamed = [e["id"] for e in RedisTransport(redis_client).read(IMPORT, limit=100_000)]
    assert streamed == list(range(streamed[0], streamed[-1] + 1))  # no gap, no repeat
    assert streamed[-1] == last
    print(
        f"\nkilled worker: {in_flight} messages not yet done, {redelivered} run twice,"
        f" 0 lost, 0 duplicate rows, all done {recovered:.1f} s after the kill;"
        f" the {left} status events it streamed but never persisted were reclaimed"
    )
