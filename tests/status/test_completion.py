"""CompletionTracker: each item counted once, exactly one ending per import, across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import peewee
import pytest
import redis

from dramatiq_shared import (
    Broadcaster,
    CompletionTracker,
    ConfigError,
    MemoryTransport,
    RedisTransport,
    StatusConfig,
    ValidationError,
)

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
    with pytest.raises(ValidationError, match="already has all its 3 items"):
        tracker.mark_done("imp-db", "d")
    with pytest.raises(ValidationError, match="expects 3 items, not 4"):
        tracker.expect("imp-db", 4)
    with pytest.raises(ValidationError, match="'nope' was never expected"):
        tracker.mark_done("nope", "a")
    tracker.expect("imp-empty", 0)
    broadcaster.close()
    assert [e["status"] for e in transport.read("imp-db")] == ["PROCESSING"] * 3 + ["COMPLETED"]
    assert [e["status"] for e in transport.read("imp-empty")] == ["COMPLETED"]


def test_it_needs_exactly_one_store(redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigError, match="exactly one of redis_client and database"):
        CompletionTracker(Broadcaster(MemoryTransport()))
