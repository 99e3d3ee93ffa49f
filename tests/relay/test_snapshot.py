"""Late joiners: an import's snapshot, then only the events after it, never a step back."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp
import dramatiq
import peewee
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from dramatiq_shared import DatabaseConfig, NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.db import create_tables, init_database
from dramatiq_shared.relay import RedisSource, create_app
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.relay.snapshot import TERMINAL, ImportState, progress
from dramatiq_shared.stores import DeadLetterStore, StatusHistory

from .conftest import SECRET, RunningRelay, an_import, collect, publish_all


async def get_snapshot(url: str, import_id: str, token: str | None = None) -> dict[str, Any]:
    token = sign(import_id, SECRET) if token is None else token
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/imports/{import_id}/snapshot?token={token}") as response,
    ):
        assert response.status == 200, await response.text()
        return dict(await response.json())


def steps_back(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Each (note, from, to) where folding ``events`` took a note from an end back."""
    state = ImportState("check")
    back = []
    for event in events:
        note = event.get("noteId")
        before = state.notes[note].status if note in state.notes else None
        state.apply(event)
        after = state.notes[note].status if note is not None else None
        if before in TERMINAL and after not in TERMINAL:
            back.append((note, before, str(after)))
    return back


def test_a_late_joiner_gets_the_snapshot_then_only_newer_events(
    redis_relay: RunningRelay, redis_client: redis.Redis
) -> None:
    transport = RedisTransport(redis_client)
    published = publish_all(
        transport, an_import("imp-s", notes=60, lines=4, failing=frozenset({7, 30}))
    )
    later = [
        StatusEvent("imp-s", NoteStatus.PROCESSING, note_id="n-61", context="note"),
        # A redelivered note's PROCESSING after its COMPLETED: not a step back.
        StatusEvent("imp-s", NoteStatus.PROCESSING, note_id="n-4", context="note"),
        StatusEvent("imp-s", NoteStatus.COMPLETED, note_id="n-61", context="note"),
    ]

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        snapshot = await get_snapshot(redis_relay.url, "imp-s")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{redis_relay.url}/ws") as ws,
        ):
            await ws.send_json(
                {
                    "type": "subscribe",
                    "import_id": "imp-s",
                    "token": sign("imp-s", SECRET),
                    "last_event_id": snapshot["last_event_id"],
                }
            )
            await collect(ws, until=lambda got: any(f["type"] == "subscribed" for f in got))
            await asyncio.to_thread(transport.append, later, int(time.time() * 1000))
            tail = await collect(ws, until=lambda got: len(got) >= len(later))
        return snapshot, tail, await get_snapshot(redis_relay.url, "imp-s")

    snapshot, tail, after = asyncio.run(scenario())
    assert snapshot["last_event_id"] == published[-1] == len(published)
    assert snapshot["counts"] == {
        "PENDING": 0,
        "PROCESSING": 0,
        "RETRYING": 0,
        "COMPLETED": 58,
        "FAILED": 2,
    }
    # n-3's last event is a line's PROCESSING, after its COMPLETED: it stays COMPLETED.
    assert snapshot["notes"]["n-3"] == {
        "status": "COMPLETED",
        "title": "Recipe 3",
        "message": "4 lines",
        "lines_done": 4,
        "lines_total": 4,
        "updated": snapshot["notes"]["n-3"]["updated"],
    }
    assert snapshot["notes"]["n-7"]["message"] == "ParseError: no ingredients found"
    assert (snapshot["status"], snapshot["message"]) == ("FAILED", "2 of 60 failed")
    assert (snapshot["current_count"], snapshot["total_count"]) == (60, 60)
    assert len(snapshot["recent"]) == 100
    assert snapshot["recent"][-1]["id"] == len(published)
    # Only what came after the snapshot, in order, and no step back for n-4.
    events = [f["event"] for f in tail if f["type"] == "event"]
    assert [e["id"] for e in events] == [len(published) + n for n in (1, 2, 3)]
    assert after["last_event_id"] == len(published) + 3
    assert after["notes"]["n-4"]["status"] == "COMPLETED"
    assert after["notes"]["n-61"]["status"] == "COMPLETED"
    assert after["counts"]["COMPLETED"] == 59


def test_folding_never_takes_a_note_back_from_its_end() -> None:
    events = an_import("imp-f", notes=30, lines=3, failing=frozenset({5}))
    wire = [{**e.to_wire(), "id": n} for n, e in enumerate(events, start=1)]
    raw_back = [
        (w["noteId"], w["status"])
        for before, w in itertools.pairwise(wire)
        if w.get("noteId") and w["noteId"] == before.get("noteId") and before["status"] in TERMINAL
    ]
    assert raw_back  # the import does hold PROCESSING events after a note's end...
    assert steps_back(wire) == []  # ...and the fold never shows one


def test_a_notes_title_comes_from_its_events_metadata_and_stays() -> None:
    state = ImportState("imp-t")
    titled = {"title": "Weeknight Tomato Soup"}
    events = [
        {"id": 1, "status": "PROCESSING", "noteId": "n-1", "context": "note", "metadata": titled},
        {"id": 2, "status": "PROCESSING", "noteId": "n-1", "context": "line", "currentCount": 1},
        {"id": 3, "status": "COMPLETED", "noteId": "n-1", "context": "note", "metadata": {}},
        {"id": 4, "status": "PROCESSING", "noteId": "n-2", "context": "note"},
    ]
    for event in events:
        state.apply(event)
    notes = state.as_dict()["notes"]
    assert notes["n-1"]["title"] == "Weeknight Tomato Soup"  # kept past events without one
    assert notes["n-2"]["title"] == ""


def test_the_snapshot_reads_what_the_stream_trimmed_from_the_database(
    redis_client: redis.Redis, redis_url: str, database: peewee.Database
) -> None:
    history = StatusHistory(database)
    transport = RedisTransport(redis_client, maxlen=100)
    events = an_import("imp-d", notes=40, lines=5, failing=frozenset({12}))
    for start in range(0, len(events), 100):
        batch = events[start : start + 100]
        ids = transport.append(batch, 1_000)
        history.write([(i, 1_000, e) for i, e in zip(ids, batch, strict=True)], batch_size=100)
    assert redis_client.xlen(transport.keys.status("imp-d")) < len(events)  # trimmed

    def make() -> web.Application:
        return create_app(RedisSource(aioredis.from_url(redis_url), history), secret=SECRET)

    with RunningRelay(make) as relay:
        snapshot = asyncio.run(get_snapshot(relay.url, "imp-d"))
    assert snapshot["last_event_id"] == len(events)
    assert snapshot["counts"]["COMPLETED"] == 39
    assert snapshot["counts"]["FAILED"] == 1
    assert snapshot["notes"]["n-1"]["lines_total"] == 5  # n-1 lives only in the database


def test_a_late_joiner_to_an_import_of_12000_lines_has_its_snapshot_within_a_second(
    redis_relay: RunningRelay, redis_client: redis.Redis
) -> None:
    events = an_import("imp-big", notes=1_000, lines=12)
    publish_all(RedisTransport(redis_client, maxlen=100_000), events, batch=500)
    started = time.perf_counter()
    snapshot = asyncio.run(get_snapshot(redis_relay.url, "imp-big"))
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = asyncio.run(get_snapshot(redis_relay.url, "imp-big"))
    warm = time.perf_counter() - started
    print(f"snapshot of {len(events)} events: {cold * 1000:.0f} ms cold, {warm * 1000:.0f} ms kept")
    assert snapshot["counts"]["COMPLETED"] == 1_000
    assert snapshot["status"] == "COMPLETED"
    assert again == snapshot
    assert cold < 1.0
    assert warm < cold


def test_the_snapshot_checks_tokens(redis_relay: RunningRelay, redis_client: redis.Redis) -> None:
    publish_all(RedisTransport(redis_client), an_import("imp-1", notes=2, lines=1))

    async def scenario() -> list[int]:
        found = []
        async with aiohttp.ClientSession() as session:
            for token in ["", sign("imp-2", SECRET), sign("*", SECRET)]:
                path = f"/imports/imp-1/snapshot?token={token}"
                async with session.get(f"{redis_relay.url}{path}") as response:
                    found.append(response.status)
        return found

    assert asyncio.run(scenario()) == [401, 403, 200]


def test_the_imports_overview_gives_each_imports_counts_elapsed_time_and_rate(
    redis_relay: RunningRelay, redis_client: redis.Redis
) -> None:
    transport = RedisTransport(redis_client)
    started = int(time.time() * 1000) - 10_000
    ended = an_import("imp-ended", notes=20, lines=2, failing=frozenset({4, 9}))
    transport.append(ended[:1], started)  # its first event ten seconds ago...
    transport.append(ended[1:], started + 8_000)  # ...its last eight seconds later
    running = an_import("imp-running", notes=10, lines=2)[:-12]
    transport.append(running, int(time.time() * 1000))

    async def scenario() -> tuple[Any, ...]:
        return (
            await call_json(redis_relay.url, "/imports/overview", sign("*", SECRET)),
            await call_json(redis_relay.url, "/imports/overview", sign("imp-ended", SECRET)),
        )

    (status, lines), (refused, _) = asyncio.run(scenario())
    assert (status, refused) == (200, 403)
    by_id = {line["import_id"]: line for line in lines}
    ended_line = by_id["imp-ended"]
    assert (ended_line["status"], ended_line["done"], ended_line["failed"]) == ("FAILED", 18, 2)
    assert ended_line["elapsed"] == 8.0
    assert ended_line["rate"] == 2.5  # 20 notes in 8 s
    assert ended_line["lines_rate"] == 5.0  # their 40 lines
    assert ended_line["eta"] == 0.0
    assert ended_line["dead_lettered"] is None  # this relay has no dead-letters table
    running_line = by_id["imp-running"]
    assert running_line["status"] == "PROCESSING"
    assert (running_line["done"], running_line["processing"]) == (7, 1)
    assert running_line["current_count"] == 7
    # The 3 notes left, at 7 notes in its elapsed time (to a tenth of a second).
    assert running_line["eta"] == pytest.approx(3 * running_line["elapsed"] / 7, abs=0.051)


def test_an_imports_eta_is_what_is_left_at_the_rate_so_far() -> None:
    state = ImportState("imp-eta")
    events: list[dict[str, Any]] = [
        {"id": 1, "status": "PROCESSING", "context": "import", "totalCount": 10},
        *(
            {
                "id": 1 + n,
                "status": "COMPLETED",
                "noteId": f"n-{n}",
                "currentCount": 3,
                "totalCount": 3,
            }
            for n in range(1, 5)
        ),
    ]
    for n, event in enumerate(events):
        state.apply(event | {"timestamp": 1_000_000 + 1_000 * n})  # one event a second
    line = progress(state.as_dict(), now_ms=1_000_000 + 8_000)
    # 4 notes (12 lines) finished in 8 s: the 6 left take 12 s more at that rate.
    assert (line["elapsed"], line["rate"], line["lines_rate"]) == (8.0, 0.5, 1.5)
    assert line["eta"] == 12.0
    assert progress(state.as_dict(), now_ms=1_000_000 + 16_000)["eta"] == 24.0
    state.apply({"id": 9, "status": "PROCESSING", "noteId": "n-5", "timestamp": 1_000_000})
    no_total = state.as_dict() | {"total_count": None}
    assert progress(no_total, now_ms=1_000_000 + 8_000)["eta"] is None


def test_a_snapshot_counts_the_notes_ended_each_second_of_its_last_five_minutes() -> None:
    state = ImportState("imp-chart")
    start = 1_700_000_000_000
    ends = [
        ("n-1", "COMPLETED", start + 100),
        ("n-2", "FAILED", start + 900),
        ("n-1", "COMPLETED", start + 1_500),  # a redelivery: n-1 ended once
        ("n-3", "COMPLETED", start + 2_000),
    ]
    for n, (note, status, stamp) in enumerate(ends, 1):
        state.apply({"id": n, "status": status, "noteId": note, "timestamp": stamp})
    second = start // 1000
    assert state.as_dict()["ended_by_second"] == [(second, 2), (second + 2, 1)]
    # Ten minutes later, one a second for 700 s: only the last 300 s are kept.
    for n in range(700):
        state.apply(
            {
                "id": 10 + n,
                "status": "COMPLETED",
                "noteId": f"m-{n}",
                "timestamp": start + 600_000 + 1_000 * n,
            }
        )
    kept = state.as_dict()["ended_by_second"]
    assert kept == [(second + 600 + n, 1) for n in range(400, 700)]
    assert progress(state.as_dict(), now_ms=start)["ended_by_second"] == kept


def test_the_overview_counts_each_imports_dead_letters_not_replayed_yet(
    redis_client: redis.Redis, redis_url: str, sqlite_url: str
) -> None:
    database = init_database(DatabaseConfig(url=sqlite_url))
    create_tables(database)
    store = DeadLetterStore(database)
    for n, (import_id, note) in enumerate(
        [("imp-dl", "n-1"), ("imp-dl", "n-2"), ("imp-ok", "n-1")]
    ):
        message = dramatiq.Message(
            queue_name="default",
            actor_name="parse_note",
            args=(import_id, note),
            kwargs={},
            options={},
            message_id=f"m-{n}",
        )
        store.record(
            message.asdict(), error_type="builtins.KeyError", error_message="x", reason="exhausted"
        )
    transport = RedisTransport(redis_client)
    publish_all(transport, an_import("imp-dl", notes=3, lines=1, failing=frozenset({1, 2})))
    publish_all(transport, an_import("imp-clean", notes=2, lines=1))

    def make() -> web.Application:
        client = aioredis.from_url(redis_url)
        return create_app(RedisSource(client), secret=SECRET, dead_letters=store)

    with RunningRelay(make) as relay:
        status, lines = asyncio.run(call_json(relay.url, "/imports/overview", sign("*", SECRET)))
    assert status == 200
    by_id = {line["import_id"]: line["dead_lettered"] for line in lines}
    assert by_id == {"imp-dl": 2, "imp-clean": 0}


async def call_json(url: str, path: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json()
