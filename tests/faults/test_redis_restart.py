"""Redis restarted mid-run (persistence on): the workers reconnect and nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dramatiq_shared import RedisTransport
from dramatiq_shared.db.models import Note
from dramatiq_shared.keys import Keys

from ..conftest import RedisServer, wait_until
from .synthetic import endings, executions, prepare, stored_event_ids, workers

pytestmark = pytest.mark.faults

MESSAGES = 10_000
IMPORT = "imp-restart"


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own with an append-only file fsynced on every write."""
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").started()
    yield server
    server.stop()


def test_redis_restarted_mid_run_loses_nothing(
    persistent_redis: RedisServer, postgres_url: str
) -> None:
    client = redis.Redis.from_url(persistent_redis.url)
    database = prepare(persistent_redis.url, postgres_url, IMPORT, MESSAGES)

    try:
        with workers(persistent_redis.url, postgres_url):
            deadline = time.monotonic() + 180
            wait_until(lambda: Note.select().count() >= MESSAGES // 3, deadline)
            persistent_redis.stop()
            stopped_at = time.monotonic()
            in_flight = MESSAGES - Note.select().count()
            time.sleep(2)
            persistent_redis.start()
            done = wait_until(lambda: Note.select().count() == MESSAGES, deadline)
            recovered = time.monotonic() - stopped_at
            assert done, "messages were lost"
            wait_until(lambda: endings(client, IMPORT), deadline)
    finally:
        database.close_all()

    ran = executions(client, IMPORT)
    assert set(ran) == set(range(MESSAGES))
    counts = client.hgetall(Keys().completion(IMPORT))
    assert endings(client, IMPORT) == ["COMPLETED"], counts
    # The stream keeps the newest events; the database all of them, without a gap.
    last = RedisTransport(client).read(IMPORT, limit=100_000)[-1]["id"]
    assert stored_event_ids(database, IMPORT) == list(range(1, last + 1))
    assert client.zcard("dramatiq:default.XQ") == 0
    print(
        f"\nredis restart: {in_flight} messages not yet done, Redis down 2 s,"
        f" {sum(ran.values()) - MESSAGES} run twice, 0 lost, 0 duplicate rows,"
        f" all done {recovered:.1f} s after it stopped"
    )
