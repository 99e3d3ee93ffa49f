"""CompletionTracker: each item counted once, exactly one ending per import, across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import peewee
import pytest
import redis

from dramatiq_shared import (
    Broadcaster,
    CompletionTracker,
    ConfigError,
    DatabaseConfig,
    MemoryTransport,
    RedisTransport,
    StatusConfig,
    ValidationError,
)
from dramatiq_shared.db import create_tables, init_database

from .completion_marks import ITEMS

SCRIPT = Path(__file__).with_name("completion_marks.py")


def test_4_processes_with_redelivered_items_end_the_import_exactly_once(
    redis_client: redis.Redis, redis_url: str
) -> None:
    tracker = CompletionTracker(
        Broadcaster(RedisTransport(redis_client)), redis_client=redis_client
    )
    tracker.expect("imp-done", ITEMS)
    start = time.time() + 1.5
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), redis_url, str(n), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    finished = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        finished += json.loads(out)["finished"]
    assert len(finished) == 1  # one mark, in one process, saw the import finish

    events = RedisTransport(redis_client).read("imp-done", limit=100_000)
    endings = [e for e in events if e["status"] in ("COMPLETED", "FAILED")]
    assert len(endings) == 1
    (ending,) = endings
    assert ending["status"] == "FAILED"  # items 7, 107, ... failed
    assert ending["metadata"] == {"failed": 10, "total": ITEMS}
    progress = sorted(e["currentCount"] for e in events if e["status"] == "PROCESSING")
    assert progress == list(range(1, ITEMS + 1))  # each item counted once, never past total
    assert all(e["totalCount"] == ITEMS for e in events)


def test_the_database_counts_the_same_way(database: peewee.Database) -> None:
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=0))
    tracker = CompletionTracker(broadcaster, database=database)
    tracker.expect("imp-db", 3)
    tracker.expect("imp-db", 3)  # idempotent
    marks = [tracker.mark_done("imp-db", item) for item in ("a", "b", "a", "c", "c")]
    assert [(m.current, m.counted, m.finished) for m in marks] == [
        (1, True, False),
        (2, True, False),
        (2, False, False),
        (3, True, True),
        (3, False, False),
    ]
    beyond = tracker.mark_done("imp-db", "d")  # logged, not raised: see the test below
    assert (beyond.current, beyond.total, beyond.counted, beyond.finished) == (3, 3, False, False)
    with pytest.raises(ValidationError, match="expects 3 items, not 4"):
        tracker.expect("imp-db", 4)
    tracker.expect("imp-empty", 0)
    broadcaster.close()
    assert [e["status"] for e in transport.read("imp-db")] == ["PROCESSING"] * 3 + ["COMPLETED"]
    assert [e["status"] for e in transport.read("imp-empty")] == ["COMPLETED"]


def test_it_needs_exactly_one_store(redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="exactly one of redis_client and database"):
        CompletionTracker(Broadcaster(MemoryTransport()))


@pytest.mark.parametrize("store", ["redis_client", "sqlite_url"])
def test_a_mark_for_an_import_nobody_expected_is_logged_once_and_counts_nothing(
    store: str, request: pytest.FixtureRequest, records: list[dict[str, Any]]
) -> None:
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=0))
    if store == "redis_client":
        tracker = CompletionTracker(broadcaster, redis_client=request.getfixturevalue(store))
    else:
        database = init_database(DatabaseConfig(url=request.getfixturevalue(store)))
        create_tables(database)
        tracker = CompletionTracker(broadcaster, database=database)
    marks = [tracker.mark_done("imp-unknown", item) for item in ("a", "b", "a")]
    assert all(not m.counted and not m.finished for m in marks)
    tracker.expect("imp-full", 1)
    tracker.mark_done("imp-full", "a")
    beyond = [tracker.mark_done("imp-full", item) for item in ("b", "c")]
    assert all(not m.counted and not m.finished for m in beyond)
    broadcaster.close()
    warnings = [r["message"] for r in records if r["level"]["name"] == "WARNING"]
    assert warnings == [
        "Import imp-unknown was never expected (CompletionTracker.expect(import_id, total)"
        " declares it): its items are not counted and it will not be ended",
        "Import imp-full already has all the items it expects (1): further items are not counted",
    ]
    assert transport.read("imp-unknown") == []  # no progress, no ending invented
    with pytest.raises(ValidationError, match="item_id must be"):
        tracker.mark_done("imp-full", "")  # a bad value is still refused
