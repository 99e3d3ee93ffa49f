"""PostgreSQL unreachable for 10 s mid-run (a proxy drops and refuses connections; the
server is not stopped): operations are retried, the database breaker opens and defers
the work, and all of it completes after recovery."""

from __future__ import annotations

import time

import pytest
import redis

from dramatiq_shared import RedisTransport
from dramatiq_shared.db.models import Note
from dramatiq_shared.keys import Keys

from ..conftest import wait_until
from .proxy import Proxy
from .synthetic import endings, executions, prepare, stored_event_ids, workers

pytestmark = pytest.mark.faults

MESSAGES = 10_000
IMPORT = "imp-db-outage"
OUTAGE = 10.0


def test_postgres_unreachable_for_10_s_defers_work_and_loses_none(
    redis_client: redis.Redis,
    redis_url: str,
    postgres_url: str,
    proxied_postgres: tuple[str, Proxy],
) -> None:
    through_proxy, proxy = proxied_postgres
    database = prepare(redis_url, postgres_url, IMPORT, MESSAGES, actor="store_guarded")
    with workers(redis_url, through_proxy):
        deadline = time.monotonic() + 180
        wait_until(lambda: Note.select().count() >= MESSAGES // 4, deadline)
        proxy.cut()
        cut_at = time.monotonic()
        in_flight = MESSAGES - Note.select().count()
        time.sleep(OUTAGE)
        done_during = Note.select().count()
        proxy.restore()
        done = wait_until(lambda: Note.select().count() == MESSAGES, deadline)
        recovered = time.monotonic() - cut_at - OUTAGE
        assert done, "messages were lost"
        wait_until(lambda: endings(redis_client, IMPORT), deadline)

    ran = executions(redis_client, IMPORT)
    assert set(ran) == set(range(MESSAGES))
    assert endings(redis_client, IMPORT) == ["COMPLETED"]
    assert redis_client.zcard("dramatiq:default.XQ") == 0  # nothing gave up
    opened = [
        fields
        for _, fields in redis_client.xrange(Keys().breaker_events)
        if fields[b"breaker"] == b"database" and fields[b"event"] == b"opened"
    ]
    assert opened  # the breaker held the work back rather than burning attempts
    last = RedisTransport(redis_client).read(IMPORT, limit=100_000)[-1]["id"]
    assert stored_event_ids(database, IMPORT) == list(range(1, last + 1))
    database.close_all()
    print(
        f"\ndatabase outage: {in_flight} messages not yet done, {OUTAGE:.0f} s unreachable"
        f" ({done_during - (MESSAGES - in_flight)} notes written meanwhile),"
        f" breaker opened {len(opened)} times, {sum(ran.values()) - MESSAGES} run twice,"
        f" 0 lost, 0 duplicate rows, all done {recovered:.1f} s after recovery"
    )
