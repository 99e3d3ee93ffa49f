"""Broadcaster and transports: coalescing, ordering, ids, history equal to the stream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import peewee
import pytest
import redis
from loguru import logger

from dramatiq_shared import (
    Broadcaster,
    ConfigError,
    MemoryTransport,
    NoteStatus,
    RedisTransport,
    StatusConfig,
    StatusEvent,
    ValidationError,
    add_status_event_and_broadcast,
    create_tables,
    init_database,
    set_broadcaster,
)
from dramatiq_shared.status.transport import batch_entry
from dramatiq_shared.stores import StatusHistory
from tests.conftest import wait_until


def progress(n: int, total: int = 1_000, **fields: Any) -> StatusEvent:
    return StatusEvent(
        fields.pop("import_id", "imp-1"),
        NoteStatus.PROCESSING,
        current_count=n,
        total_count=total,
        context=fields.pop("context", "parse"),
        **fields,
    )


def test_a_burst_of_progress_is_coalesced_to_a_few_with_the_last_kept() -> None:
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=250))
    started = time.monotonic()
    for n in range(1_000):
        broadcaster.publish(progress(n))
    assert time.monotonic() - started < 0.1
    broadcaster.publish(StatusEvent("imp-1", NoteStatus.COMPLETED, context="import"))
    broadcaster.close()
    delivered = transport.read("imp-1")
    counts = [e["currentCount"] for e in delivered if e["status"] == "PROCESSING"]
    assert len(counts) <= 3
    assert counts[-1] == 999  # the newest of the burst is never lost
    assert counts == sorted(counts)
    assert delivered[-1]["status"] == "COMPLETED"
    assert [e["id"] for e in delivered] == list(range(1, len(delivered) + 1))
    assert broadcaster.counts["coalesced"] >= 990


def test_a_waiting_event_goes_out_after_its_interval_on_its_own() -> None:
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=100))
    broadcaster.publish(progress(1))
    broadcaster.publish(progress(2))
    time.sleep(0.05)
    assert [e["currentCount"] for e in transport.read("imp-1")] == [1]
    time.sleep(0.15)
    assert [e["currentCount"] for e in transport.read("imp-1")] == [1, 2]
    broadcaster.close()


def test_each_import_keeps_its_order_across_keys() -> None:
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=60_000))
    broadcaster.publish(progress(1, context="a"))
    broadcaster.publish(progress(2, context="a"))  # waits: a sent one just now
    broadcaster.publish(progress(3, context="b"))  # b's first goes out, after a's waiting one
    broadcaster.publish(StatusEvent("imp-1", NoteStatus.FAILED, context="a"))
    broadcaster.close()
    assert [(e["context"], e["currentCount"]) for e in transport.read("imp-1")] == [
        ("a", 1),
        ("a", 2),
        ("b", 3),
        ("a", None),
    ]


def test_the_history_equals_what_was_streamed(database: peewee.Database) -> None:
    transport = MemoryTransport()
    history = StatusHistory(database)
    broadcaster = Broadcaster(transport, history, StatusConfig(broadcast_interval=20, batch_size=7))
    for n in range(60):
        broadcaster.publish(progress(n, import_id=f"imp-{n % 2}", metadata={"n": n}))
        if n % 10 == 0:
            time.sleep(0.03)
    for import_id in ("imp-0", "imp-1"):
        broadcaster.publish(StatusEvent(import_id, NoteStatus.COMPLETED, message="done"))
    broadcaster.close()
    for import_id in ("imp-0", "imp-1"):
        streamed = transport.read(import_id)
        assert history.read(import_id) == streamed
        assert streamed[-1]["status"] == "COMPLETED"
    assert broadcaster.counts["persisted"] == broadcaster.counts["sent"]


def test_redis_transport_numbers_each_import_without_gaps_across_publishers(
    redis_client: redis.Redis, redis_url: str
) -> None:
    publishers = [RedisTransport(redis.Redis.from_url(redis_url)) for _ in range(4)]

    def publish(transport: RedisTransport) -> None:
        for n in range(0, 200, 4):
            transport.append([progress(n), progress(n + 1, import_id="imp-2")], 1_000 + n)

    threads = [threading.Thread(target=publish, args=(t,)) for t in publishers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = publishers[0]
    for import_id in ("imp-1", "imp-2"):
        events = reader.read(import_id, limit=10_000)
        assert [e["id"] for e in events] == list(range(1, 201))
        assert {e["importId"] for e in events} == {import_id}
    assert [e["id"] for e in reader.read("imp-1", after=195)] == [196, 197, 198, 199, 200]
    batches = redis_client.xrange(reader.keys.all_status)
    assert sum(len(batch_entry(fields)) for _, fields in batches) == 400
    assert set(redis_client.zrange(reader.keys.imports, 0, -1)) == {b"imp-1", b"imp-2"}


def test_the_memory_transport_feeds_an_asyncio_loop() -> None:
    transport = MemoryTransport()

    async def receive() -> list[Any]:
        queue, unsubscribe = transport.queue(asyncio.get_running_loop())
        publisher = threading.Thread(target=lambda: transport.append([progress(1), progress(2)], 5))
        publisher.start()
        received = [await asyncio.wait_for(queue.get(), 5) for _ in range(2)]
        publisher.join()
        unsubscribe()
        return received

    received = asyncio.run(receive())
    assert [(import_id, e["id"], e["currentCount"]) for import_id, e in received] == [
        ("imp-1", 1, 1),
        ("imp-1", 2, 2),
    ]


def test_a_transport_that_fails_is_retried_logged_and_sent_once_it_is_back(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, stop, start = private_redis
    errors: list[str] = []
    handler = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    broadcaster = Broadcaster(
        RedisTransport(client), config=StatusConfig(max_retries=2, timeout=1_000)
    )
    stop()
    started = time.monotonic()
    broadcaster.publish(StatusEvent("imp-1", NoteStatus.COMPLETED))
    assert time.monotonic() - started < 0.05  # publishing never waits on the transport
    try:
        failed = wait_until(
            lambda: any("could not send after" in e for e in errors), time.monotonic() + 20
        )
        assert failed, errors
        assert broadcaster.counts["sent"] == 0
        start()
        assert broadcaster.flush(timeout=30)  # kept, not dropped: sent once Redis is back
    finally:
        broadcaster.close()
        logger.remove(handler)
    assert broadcaster.counts["sent"] == 1
    assert broadcaster.counts["failed"] == 0
    assert [e["status"] for e in RedisTransport(client).read("imp-1")] == ["COMPLETED"]


def test_add_status_event_and_broadcast_needs_a_configured_broadcaster() -> None:
    set_broadcaster(None)
    with pytest.raises(ConfigError, match="no status broadcaster is configured"):
        add_status_event_and_broadcast({"importId": "i", "status": "PENDING"})
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=0))
    set_broadcaster(broadcaster)
    try:
        event = add_status_event_and_broadcast({"importId": "i", "status": "PENDING"})
        assert event == StatusEvent("i", NoteStatus.PENDING)
        with pytest.raises(ValidationError, match="status must be one of"):
            add_status_event_and_broadcast({"importId": "i", "status": "SOMEDAY"})
        broadcaster.close()
        assert [e["status"] for e in transport.read("i")] == ["PENDING"]
    finally:
        set_broadcaster(None)


def test_a_second_run_in_memory_numbers_on_from_the_history(database: peewee.Database) -> None:
    history = StatusHistory(database)
    for run in range(2):  # two processes, one after the other, on one database
        transport = MemoryTransport(last_id=history.last_id)
        broadcaster = Broadcaster(transport, history)
        broadcaster.publish(StatusEvent("imp-1", NoteStatus.PROCESSING, message=f"run {run}"))
        broadcaster.publish(StatusEvent("imp-1", NoteStatus.COMPLETED, message=f"run {run}"))
        broadcaster.close()
    assert history.last_id("imp-1") == 4
    assert history.last_id("imp-2") == 0
    assert [(e["id"], e["message"]) for e in history.read("imp-1")] == [
        (1, "run 0"),
        (2, "run 0"),
        (3, "run 1"),
        (4, "run 1"),
    ]


def test_events_the_history_could_not_take_are_written_once_it_can(sqlite_url: str) -> None:
    database = init_database(sqlite_url)
    create_tables(database)
    history = StatusHistory(database)
    transport = MemoryTransport()
    broadcaster = Broadcaster(
        transport, history, StatusConfig(broadcast_interval=20, timeout=200, max_retries=1)
    )
    database.execute_sql("ALTER TABLE ds_status_events RENAME TO unreachable")
    for n in range(50):
        broadcaster.publish(progress(n, metadata={"n": n}))
    broadcaster.publish(StatusEvent("imp-1", NoteStatus.COMPLETED, message="done"))
    assert not broadcaster.flush(timeout=0.5)  # the history is out of reach
    database.execute_sql("ALTER TABLE unreachable RENAME TO ds_status_events")
    assert broadcaster.flush(timeout=10)  # written on a later try, nothing dropped
    broadcaster.close()
    assert history.read("imp-1") == transport.read("imp-1")
    assert broadcaster.counts["persist_failed"] == 0
    database.close()


def test_a_retried_append_publishes_nothing_twice(redis_client: redis.Redis) -> None:
    transport = RedisTransport(redis_client)
    batch = [progress(1), progress(2)]
    first = transport.append(batch, 1_000, batch="token-1")
    again = transport.append(batch, 1_000, batch="token-1")  # the first reply was lost
    assert again == first == [1, 2]
    assert [e["id"] for e in transport.read("imp-1")] == [1, 2]
    assert transport.append([progress(3)], 1_000, batch="token-2") == [3]


def test_what_a_killed_process_streamed_but_never_persisted_is_reclaimed(
    redis_client: redis.Redis, redis_url: str, postgres_url: str
) -> None:
    database = init_database(postgres_url)
    create_tables(database)
    history = StatusHistory(database)
    transport = RedisTransport(redis_client)
    script = Path(__file__).with_name("dying_publisher.py")
    dying = subprocess.Popen(
        [sys.executable, str(script), redis_url, postgres_url, "250"], stdout=subprocess.PIPE
    )
    try:
        assert dying.stdout is not None
        assert dying.stdout.readline() == b"streamed\n"
    finally:
        dying.send_signal(signal.SIGKILL)
        dying.wait()
    streamed = transport.read("imp-dead", limit=1_000)
    assert len(streamed) == 250
    assert history.read("imp-dead") == []  # the gap the relay would show

    broadcaster = Broadcaster(transport, history, StatusConfig(reclaim_after=200))
    wait_until(lambda: len(history.read("imp-dead", limit=1_000)) >= 250, time.monotonic() + 10)
    broadcaster.close()
    assert history.read("imp-dead", limit=1_000) == streamed
    assert broadcaster.counts["reclaimed"] == 250
    assert redis_client.zcard(transport.keys.unpersisted) == 0
    database.close()


def test_persisted_batches_leave_redis_but_keep_their_ids(
    redis_client: redis.Redis, postgres_url: str
) -> None:
    database = init_database(postgres_url)
    create_tables(database)
    transport = RedisTransport(redis_client)
    broadcaster = Broadcaster(transport, StatusHistory(database))
    for n in range(20):
        broadcaster.publish(progress(n, note_id=f"note-{n}"))
    broadcaster.close()
    assert broadcaster.counts["persisted"] == 20
    assert redis_client.zcard(transport.keys.unpersisted) == 0
    batches = redis_client.keys(transport.keys.batch("*"))
    assert batches
    assert not redis_client.keys(transport.keys.batch_events("*"))  # the events went
    kept = [json.loads(redis_client.get(key)) for key in batches]  # type: ignore[arg-type]
    assert sorted(i for ids in kept for i in ids) == list(range(1, 21))
    assert all(0 < redis_client.pttl(key) <= 600_000 for key in batches)
    token = batches[0].decode().rsplit(":", 1)[1]
    again = transport.append([progress(99)], 1_000, batch=token, persist=True)
    assert again == kept[0]  # a late retry still publishes nothing twice
    assert len(transport.read("imp-1")) == 20
    database.close()


def test_reclaim_counts_expired_batches_and_drops_unreadable_ones(
    redis_client: redis.Redis,
) -> None:
    transport = RedisTransport(redis_client)
    transport.append([progress(1)], 1_000, batch="good", persist=True)
    redis_client.set(transport.keys.batch("garbled"), "[7]")
    redis_client.set(transport.keys.batch_events("garbled"), '["{}"]')
    redis_client.zadd(transport.keys.unpersisted, {"garbled": 0, "gone": 0})
    found = transport.reclaim(older_than=0)
    assert (found.expired, found.unreadable) == (1, 1)
    assert [(token, [i for i, _, _ in records]) for token, records in found.batches] == [
        ("good", [1])
    ]
    assert found.batches[0][1][0][2] == progress(1)
    assert not redis_client.exists(transport.keys.batch_events("garbled"))
    assert transport.reclaim(older_than=60_000).batches == []  # leased to the first caller
    transport.persisted(["good"])
    assert redis_client.zcard(transport.keys.unpersisted) == 0
