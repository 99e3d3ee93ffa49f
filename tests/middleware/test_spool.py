"""The dead-letter spool: what the database refuses is kept, in memory or in Redis, and
written once it takes it; bad data is refused for good; a shutdown says what is left."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import peewee
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from dramatiq_shared import DatabaseConfig
from dramatiq_shared.db import create_tables, init_database
from dramatiq_shared.keys import Keys
from dramatiq_shared.middleware import ErrorHandling
from dramatiq_shared.middleware.spool import DeadLetterEntry, DeadLetterSpool
from dramatiq_shared.stores import DeadLetterStore
from dramatiq_shared.stores.tables import utcnow

from ..conftest import free_port, wait_until
from ..faults.proxy import Proxy
from .conftest import install


def quick(url: str) -> DatabaseConfig:
    """A database that gives up fast, so a cut proxy costs the test little time."""
    return DatabaseConfig(url=url, timeout=1_000, retry_attempts=1)


def bury(spool: DeadLetterSpool, number: int, **options: Any) -> None:
    """Hand the spool the dead letter of message ``m-{number}``, as ErrorHandling does."""
    message = dramatiq.Message(
        queue_name="default",
        actor_name="parse_note",
        args=(number,),
        kwargs={},
        options={"error_history": [{"attempt": 1}], **options},
        message_id=f"m-{number}",
    )
    spool.bury(
        message.asdict(), error_type="RuntimeError", error_message=f"broken {number}", reason="x"
    )


def rows(url: str) -> dict[str, Any]:
    """The dead letters in the table, by message id, read past any proxy."""
    database = init_database(url)
    try:
        return {row.message_id: row for row in DeadLetterStore(database).list(limit=1_000)}
    finally:
        database.close()


@pytest.fixture
def tables(postgres_url: str) -> str:
    create_tables(init_database(postgres_url))  # what dramatiq-shared init-db makes
    return postgres_url


def test_dead_letters_kept_in_memory_through_an_outage_are_written_once_after_it(
    stub_broker: StubBroker,
    tables: str,
    proxied_postgres: tuple[str, Proxy],
    records: list[dict[str, Any]],
) -> None:
    through_proxy, proxy = proxied_postgres
    install(stub_broker, database=quick(through_proxy))  # no Redis: kept in memory
    (handling,) = [m for m in stub_broker.middleware if isinstance(m, ErrorHandling)]
    spool = handling.spool
    assert spool is not None

    @dramatiq.actor(broker=stub_broker, max_attempts=1)
    def fails(number: int) -> None:
        raise RuntimeError(f"broken {number}")

    worker = dramatiq.Worker(stub_broker, worker_timeout=20, worker_threads=8)
    worker.start()
    try:
        proxy.cut()
        sent = {fails.send(n).message_id for n in range(40)}
        stub_broker.join("default", fail_fast=False)
        worker.join()
        assert len(spool) == 40  # every one kept, none written, none dropped
        assert rows(tables) == {}
        restored_at = utcnow()
        proxy.restore()
        assert wait_until(lambda: len(rows(tables)) == 40, time.monotonic() + 40)
    finally:
        worker.stop()
    written = rows(tables)
    assert set(written) == sent
    assert all(row.failed_at < restored_at for row in written.values())  # as they failed
    assert sorted(row.error_message for row in written.values()) == sorted(
        f"broken {n}" for n in range(40)
    )
    assert len(spool) == 0
    kept = [r for r in records if r["message"].startswith("Dead letters are kept in memory")]
    assert 1 <= len(kept) <= 2  # at the start of the outage, not once a message
    assert any(r["message"].startswith("The database takes dead letters again") for r in records)
    assert not [r for r in records if "never reached the dead-letters table" in r["message"]]


def test_a_worker_stopping_with_dead_letters_in_memory_says_how_many_and_which(
    stub_broker: StubBroker,
    tables: str,
    proxied_postgres: tuple[str, Proxy],
    records: list[dict[str, Any]],
) -> None:
    through_proxy, proxy = proxied_postgres
    install(stub_broker, database=quick(through_proxy))

    @dramatiq.actor(broker=stub_broker, max_attempts=1)
    def fails() -> None:
        raise RuntimeError("broken")

    worker = dramatiq.Worker(stub_broker, worker_timeout=20, worker_threads=2)
    worker.start()
    proxy.cut()
    sent = sorted(fails.send().message_id for _ in range(3))
    stub_broker.join("default", fail_fast=False)
    worker.join()
    worker.stop()
    (lost,) = [r for r in records if "never reached the dead-letters table" in r["message"]]
    assert lost["level"]["name"] == "ERROR"
    assert lost["message"].startswith("3 dead letters")
    assert all(message_id in lost["message"] for message_id in sent)
    assert len(stub_broker.dead_letters) == 3  # where they still are, as it says


def test_dead_letters_kept_in_redis_outlive_the_process_and_any_worker_writes_them(
    redis_client: redis.Redis, tables: str, proxied_postgres: tuple[str, Proxy]
) -> None:
    through_proxy, proxy = proxied_postgres
    first = DeadLetterSpool(DeadLetterStore(quick(through_proxy)), redis_client=redis_client)
    first.open()
    proxy.cut()
    for number in [*range(5), 0]:  # the same message twice: still one record
        bury(first, number)
    first.close(timeout=1)  # the process ends; nothing is in its memory
    assert len(first) == 0
    kept_raw = redis_client.hgetall(Keys().dead_letters)
    assert len(kept_raw) == 5
    assert rows(tables) == {}

    proxy.restore()
    second = DeadLetterSpool(DeadLetterStore(tables), redis_client=redis_client)
    second.open()  # another worker boots, and writes them
    try:
        assert wait_until(lambda: redis_client.hlen(Keys().dead_letters) == 0, time.monotonic() + 5)
    finally:
        second.close()
    written = rows(tables)
    assert sorted(written) == [f"m-{n}" for n in range(5)]
    kept = {DeadLetterEntry.decode(raw).message_id: raw for raw in kept_raw.values()}
    for number in range(5):  # each as it was kept, its failure time included
        row, record = written[f"m-{number}"], DeadLetterEntry.decode(kept[f"m-{number}"])
        assert (row.failed_at, row.error_message) == (record.failed_at, f"broken {number}")
        assert row.message["args"] == [number]


def test_bad_data_is_refused_for_good_and_does_not_hold_the_rest(
    database: peewee.Database, records: list[dict[str, Any]]
) -> None:
    spool = DeadLetterSpool(DeadLetterStore(database))
    spool.open()
    try:
        bury(spool, 1, callback=object())  # not JSON
        bury(spool, 2)
    finally:
        spool.close()
    assert len(spool) == 0  # nothing kept: no later try could write it
    assert [row.message_id for row in DeadLetterStore(database).list()] == ["m-2"]
    (refused,) = [r for r in records if r["message"].startswith("The dead-letters table refused")]
    assert "m-1" in refused["message"]


def test_while_redis_refuses_too_they_are_kept_in_memory(
    tables: str, proxied_postgres: tuple[str, Proxy], records: list[dict[str, Any]]
) -> None:
    through_proxy, proxy = proxied_postgres
    # Nothing listens there; without the client's retries each refusal takes no time.
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    spool = DeadLetterSpool(DeadLetterStore(quick(through_proxy)), redis_client=nowhere)
    proxy.cut()
    bury(spool, 1)
    bury(spool, 2)  # one log record for the outage, not one a dead letter
    assert len(spool) == 2
    (kept,) = [r for r in records if r["message"].startswith("Dead letters are kept in memory")]
    assert "(Redis refused them too)" in kept["message"]
    assert "(1 in memory" in kept["message"]
    proxy.restore()
    spool.drain()  # the memory is written before Redis is looked at
    spool.close(timeout=1)
    assert len(spool) == 0
    assert sorted(rows(tables)) == ["m-1", "m-2"]
