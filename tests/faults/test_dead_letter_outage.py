"""PostgreSQL cut off (a proxy drops and refuses connections) while messages die on a
RedisBroker with real worker threads: the dead letters wait in Redis, and once the
database is back each is written to the table exactly once."""

from __future__ import annotations

import time

import dramatiq
import psycopg2
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import DatabaseConfig, get_stack, setup_broker
from dramatiq_shared.db import create_tables, init_database
from dramatiq_shared.keys import Keys
from dramatiq_shared.stores.tables import utcnow

from ..conftest import wait_until
from .proxy import Proxy

pytestmark = pytest.mark.faults

MESSAGES = 200

# Every row the table takes, and how: an insert, or an upsert that updated a row.
_COUNT_WRITES = """
CREATE TABLE dead_letter_writes (message_id text, operation text);
CREATE FUNCTION count_dead_letter_write() RETURNS trigger AS $$
BEGIN
  INSERT INTO dead_letter_writes VALUES (NEW.message_id, TG_OP);
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER counted AFTER INSERT OR UPDATE ON ds_dead_letters
  FOR EACH ROW EXECUTE FUNCTION count_dead_letter_write();
"""


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def test_dead_letters_wait_in_redis_through_an_outage_and_are_written_once(
    redis_client: redis.Redis,
    redis_url: str,
    postgres_url: str,
    proxied_postgres: tuple[str, Proxy],
) -> None:
    through_proxy, proxy = proxied_postgres
    create_tables(init_database(postgres_url))  # dramatiq-shared init-db
    query(postgres_url, _COUNT_WRITES)
    broker = setup_broker(
        RedisBroker(url=redis_url),  # type: ignore[no-untyped-call]
        redis_url=redis_url,
        database=DatabaseConfig(url=through_proxy, timeout=1_000, retry_attempts=1),
    )

    @dramatiq.actor(broker=broker, max_retries=0)
    def fails(number: int) -> None:
        raise RuntimeError(f"broken {number}")

    spool_key = Keys().dead_letters
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=8)
    worker.start()
    try:
        proxy.cut()
        sent = {fails.send(n).message_id for n in range(MESSAGES)}
        broker.join("default", timeout=60_000)
        worker.join()
        assert redis_client.hlen(spool_key) == MESSAGES
        assert query(postgres_url, "SELECT count(*) FROM ds_dead_letters") == [(0,)]
        restored_at = utcnow()
        proxy.restore()
        restored = time.monotonic()
        assert wait_until(lambda: redis_client.hlen(spool_key) == 0, restored + 60)
        caught_up = time.monotonic() - restored
    finally:
        worker.stop()
        get_stack(broker).broadcaster.close()
        broker.close()

    written = query(postgres_url, "SELECT message_id, failed_at FROM ds_dead_letters")
    assert {message_id for message_id, _ in written} == sent
    assert all(failed_at < restored_at for _, failed_at in written)  # as they failed
    writes = query(postgres_url, "SELECT operation, count(*) FROM dead_letter_writes GROUP BY 1")
    assert writes == [("INSERT", MESSAGES)]  # each written once: no second write, no update
    assert redis_client.zcard("dramatiq:default.XQ") == MESSAGES  # the broker's copies
    print(
        f"\ndead letters through a database outage: {MESSAGES} kept in Redis, all written"
        f" once {caught_up:.1f} s after recovery"
    )
