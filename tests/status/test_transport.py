"""RedisTransport's keys: no import id reaches another key, and no batch is half-applied."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dramatiq_shared import (
    Broadcaster,
    CompletionTracker,
    NoteStatus,
    RedisTransport,
    StatusEvent,
    ValidationError,
)
from dramatiq_shared.keys import Keys
from dramatiq_shared.relay import RedisSource
from dramatiq_shared.relay.sources import Event
from dramatiq_shared.status.transport import batch_entry

#: Ids that name, or look like, another key of the layout, old or new.
HOSTILE = [
    "all",
    "imports",
    "unpersisted",
    "*",
    ":",
    "{x}",
    "x",
    "x:items",
    "\u200b",
    "status:all",
    "global:status",
    "import:status:x",
    "é" * 128,
]

KEYS = Keys()


def event(import_id: str, n: int) -> StatusEvent:
    return StatusEvent(
        import_id, NoteStatus.PROCESSING, note_id=f"note-{n}", message=f"{import_id!r} {n}"
    )


def entries(client: redis.Redis) -> int:
    """How many entries all the streams in the database hold."""
    return sum(int(client.xlen(key)) for key in client.scan_iter() if client.type(key) == b"stream")


def test_every_hostile_id_keeps_its_own_events_end_to_end(
    redis_client: redis.Redis, redis_url: str
) -> None:
    transport = RedisTransport(redis_client)
    # Interleaved in one batch, so a key shared by two ids shows as ids out of order.
    batch = [event(import_id, n) for n in range(3) for import_id in HOSTILE]
    ids = transport.append(batch, 1_000)
    assert ids == [n + 1 for n in range(3) for _ in HOSTILE]
    assert transport.append(batch[: len(HOSTILE)], 2_000) == [4] * len(HOSTILE)

    for import_id in HOSTILE:
        events = transport.read(import_id)
        assert [e["id"] for e in events] == [1, 2, 3, 4], import_id
        assert {e["importId"] for e in events} == {import_id}
        assert [e["noteId"] for e in events] == ["note-0", "note-1", "note-2", "note-0"]

    async def relay() -> tuple[dict[str, list[Event]], list[Event], list[dict[str, Any]]]:
        client = aioredis.from_url(redis_url)
        source = RedisSource(client)
        histories = {import_id: await source.history(import_id, 0) for import_id in HOSTILE}
        live: list[Event] = []
        feed = asyncio.get_running_loop().create_task(source.run(live.append, "0-0"))
        async with asyncio.timeout(10):
            while len(live) < len(batch) + len(HOSTILE):
                await asyncio.sleep(0.01)
        feed.cancel()
        listed = await source.imports()
        await client.aclose()
        return histories, live, listed

    histories, live, listed = asyncio.run(relay())
    for import_id, history in histories.items():
        assert [e.id for e in history] == [1, 2, 3, 4], import_id
        assert {e.import_id for e in history} == {import_id}
        assert history[-1].frame.startswith('{"type":"event","id":4,')
    assert sorted((e.import_id, e.id) for e in live) == sorted(
        (import_id, n) for import_id in HOSTILE for n in range(1, 5)
    )
    assert sorted((i["import_id"], i["last_event_id"]) for i in listed) == sorted(
        (import_id, 4) for import_id in HOSTILE
    )


def test_every_hostile_id_counts_its_own_completion(redis_client: redis.Redis) -> None:
    transport = RedisTransport(redis_client)
    broadcaster = Broadcaster(transport)
    tracker = CompletionTracker(broadcaster, redis_client=redis_client)
    # A total per id, so a count that lands on another id's keys shows.
    totals = {import_id: n + 1 for n, import_id in enumerate(HOSTILE)}
    for import_id, total in totals.items():
        tracker.expect(import_id, total)
    for import_id, total in totals.items():
        for item in range(total):
            ok = item != 0 or import_id != "x"
            progress = tracker.mark_done(import_id, f"item-{item}", ok=ok)
            assert (progress.current, progress.total, progress.counted) == (item + 1, total, True)
        assert tracker.mark_done(import_id, "item-0").counted is False
    broadcaster.close()
    for import_id, total in totals.items():
        endings = [e for e in transport.read(import_id) if e["context"] == "import"]
        endings = [e for e in endings if e["status"] in ("COMPLETED", "FAILED")]
        failed = 1 if import_id == "x" else 0
        assert [(e["status"], e["metadata"]) for e in endings] == [
            ("FAILED" if failed else "COMPLETED", {"failed": failed, "total": total})
        ], import_id


def test_an_id_too_long_for_the_history_is_refused_before_redis(
    redis_client: redis.Redis, redis_url: str
) -> None:
    long_id = "i" * 1_000
    with pytest.raises(ValidationError, match="import_id"):
        event(long_id, 0)
    tracker = CompletionTracker(
        Broadcaster(RedisTransport(redis_client)), redis_client=redis_client
    )
    with pytest.raises(ValidationError, match="import_id"):
        tracker.expect(long_id, 1)
    RedisTransport(redis_client).append([event("i" * 128, 0)], 1_000)
    # Reading takes any id (the relay's URL gives it); a long one finds nothing of others.
    assert RedisTransport(redis_client).read(long_id) == []

    async def history() -> list[Event]:
        client = aioredis.from_url(redis_url)
        found = await RedisSource(client).history(long_id, 0)
        await client.aclose()
        return found

    assert asyncio.run(history()) == []
    assert entries(redis_client) == 2  # the 128-character id's stream, and the all-stream


Corrupt = Callable[[redis.Redis], object]

#: A key of the batch below given the wrong type, each in its own way.
CORRUPTIONS: dict[str, Corrupt] = {
    "stream a string": lambda client: client.set(KEYS.status("imp-bad"), "oops"),
    "stream a hash": lambda client: client.hset(KEYS.status("imp-bad"), "a", "b"),
    "all-stream a string": lambda client: client.set(KEYS.all_status, "oops"),
    "imports index a list": lambda client: client.rpush(KEYS.imports, "imp-good"),
    "unpersisted set a string": lambda client: client.set(KEYS.unpersisted, "oops"),
    "last ids a list": lambda client: client.rpush(KEYS.last_ids, "imp-good"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS)
def test_a_batch_that_fails_writes_nothing_and_its_retry_writes_each_event_once(
    redis_client: redis.Redis, corrupt: Corrupt
) -> None:
    transport = RedisTransport(redis_client)
    batch = [event("imp-good", 0), event("imp-bad", 0), event("imp-good", 1)]
    corrupt(redis_client)
    before = set(redis_client.scan_iter())
    for _ in range(3):  # as a broadcaster retries
        with pytest.raises(redis.ResponseError):
            transport.append(batch, 1_000, batch="b1", persist=True)
    assert set(redis_client.scan_iter()) == before
    assert entries(redis_client) == 0

    redis_client.delete(*before)
    assert transport.append(batch, 1_000, batch="b1", persist=True) == [1, 1, 2]
    assert transport.append(batch, 1_000, batch="b1", persist=True) == [1, 1, 2]
    assert [e["noteId"] for e in transport.read("imp-good")] == ["note-0", "note-1"]
    assert [e["noteId"] for e in transport.read("imp-bad")] == ["note-0"]
    assert entries(redis_client) == 4  # three events in their streams, the batch in the all-stream
    (entry,) = redis_client.xrange(KEYS.all_status)
    assert [(i, d) for i, d, _ in batch_entry(entry[1])] == [
        ("imp-good", 1),
        ("imp-bad", 1),
        ("imp-good", 2),
    ]
    (reclaimed,) = transport.reclaim(older_than=0).batches
    assert reclaimed[0] == "b1"
    assert [(i, e) for i, _, e in reclaimed[1]] == list(zip([1, 1, 2], batch, strict=True))


def test_ids_go_on_after_the_streams_last_id_even_when_its_entries_were_deleted(
    redis_client: redis.Redis,
) -> None:
    transport = RedisTransport(redis_client)
    transport.append([event("imp-1", n) for n in range(3)], 1_000)
    redis_client.xdel(KEYS.status("imp-1"), "3-0")  # the stream's last id stays 3
    ids = transport.append([event("imp-2", 0), event("imp-1", 3), event("imp-1", 4)], 2_000)
    assert ids == [1, 4, 5]
    assert [e["id"] for e in transport.read("imp-1")] == [1, 2, 4, 5]
    assert transport.append([event("imp-1", 5)], 3_000) == [6]


def test_ids_go_on_from_a_stream_written_before_the_last_ids_were_kept(
    redis_client: redis.Redis,
) -> None:
    transport = RedisTransport(redis_client)
    transport.append([event("imp-1", n) for n in range(3)], 1_000)
    redis_client.delete(KEYS.last_ids)  # as an import streamed by the previous version
    assert transport.append([event("imp-1", 3), event("imp-2", 0)], 2_000) == [4, 1]
    assert redis_client.hgetall(KEYS.last_ids) == {b"imp-1": b"4", b"imp-2": b"1"}
    assert transport.append([event("imp-1", 4)], 3_000) == [5]
