"""Replay and resume: exactly the missed events, in order, across disconnects and restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import peewee
import redis
import redis.asyncio as aioredis
from aiohttp import web

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.relay import RedisSource, create_app
from dramatiq_shared.relay.auth import sign
from dramatiq_shared.stores import StatusHistory

from .conftest import SECRET, RelayProcess, RunningRelay, collect, frames

TOTAL = 5_000


def publisher(
    redis_url: str, import_id: str, total: int = TOTAL, pause: float = 0.004
) -> threading.Thread:
    """A thread publishing ``total`` events, 25 a batch, over a second or two."""

    def run() -> None:
        transport = RedisTransport(redis.Redis.from_url(redis_url))
        for start in range(0, total, 25):
            transport.append(
                [
                    StatusEvent(
                        import_id, NoteStatus.PROCESSING, current_count=n, total_count=total
                    )
                    for n in range(start, min(start + 25, total))
                ],
                int(time.time() * 1000),
            )
            time.sleep(pause)

    return threading.Thread(target=run)


async def watch(
    url: str, import_id: str, *, last_event_id: int = 0, until: Callable[[list[int]], bool]
) -> list[int]:
    """Event ids one connection receives, from ``last_event_id`` on, until ``until`` holds."""
    ids: list[int] = []

    def done(got: list[dict[str, Any]]) -> bool:
        ids[:] = [f["id"] for f in got if f["type"] == "event"]
        return until(ids)

    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
        await ws.send_json(
            {
                "type": "subscribe",
                "import_id": import_id,
                "token": sign(import_id, SECRET),
                "last_event_id": last_event_id,
            }
        )
        await collect(ws, until=done, timeout=60)
    return ids


def test_a_client_that_drops_mid_stream_resumes_with_exactly_the_missed_events(
    redis_relay: RunningRelay, redis_url: str
) -> None:
    feed = publisher(redis_url, "imp-r")

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        first = await watch(redis_relay.url, "imp-r", until=lambda ids: len(ids) >= 1_000)
        await asyncio.sleep(0.3)  # offline while events keep coming
        rest = await watch(
            redis_relay.url,
            "imp-r",
            last_event_id=first[-1],
            until=lambda ids: bool(ids) and ids[-1] >= TOTAL,
        )
        await asyncio.to_thread(feed.join)
        late = await watch(redis_relay.url, "imp-r", until=lambda ids: len(ids) >= TOTAL)
        return first, rest, late

    feed.start()
    first, rest, late = asyncio.run(scenario())
    assert first + rest == list(range(1, TOTAL + 1))  # in order, no gap, no duplicate
    assert late == list(range(1, TOTAL + 1))  # a late joiner gets the whole history


def test_events_the_stream_trimmed_come_from_the_database(
    redis_client: redis.Redis, redis_url: str, database: peewee.Database
) -> None:
    history = StatusHistory(database)
    transport = RedisTransport(redis_client, maxlen=50)
    for start in range(0, 600, 100):
        events = [
            StatusEvent("imp-t", NoteStatus.PENDING, current_count=n)
            for n in range(start, start + 100)
        ]
        ids = transport.append(events, 1_000)
        history.write([(i, 1_000, e) for i, e in zip(ids, events, strict=True)], batch_size=100)
    assert 0 < redis_client.xlen(transport.keys.status("imp-t")) < 600  # trimmed

    def make() -> web.Application:
        return create_app(RedisSource(aioredis.from_url(redis_url), history), secret=SECRET)

    with RunningRelay(make) as relay:
        ids = asyncio.run(watch(relay.url, "imp-t", until=lambda got: len(got) >= 600))
    assert ids == list(range(1, 601))


def test_clients_resume_after_the_relay_process_restarts(
    relay_process: RelayProcess, redis_url: str
) -> None:
    start, stop = relay_process
    url = start()
    feed = publisher(redis_url, "imp-p", pause=0.006)

    async def scenario() -> tuple[list[int], int, list[int]]:
        received: list[int] = []
        close_code = 0
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
            await ws.send_json(
                {"type": "subscribe", "import_id": "imp-p", "token": sign("imp-p", SECRET)}
            )

            def halfway(got: list[dict[str, Any]]) -> bool:
                received[:] = [f["id"] for f in got if f["type"] == "event"]
                return len(received) >= 1_500

            await collect(ws, until=halfway)
            stopping = asyncio.ensure_future(asyncio.to_thread(stop))  # the relay goes away...
            while not ws.closed:  # ...while the client reads on, to its closing frame
                message = await ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    received.extend(f["id"] for f in frames(message.data) if f["type"] == "event")
            close_code = ws.close_code or 0
            await stopping
        await asyncio.to_thread(start)  # ...and comes back
        rest = await watch(
            url,
            "imp-p",
            last_event_id=received[-1],
            until=lambda ids: bool(ids) and ids[-1] >= TOTAL,
        )
        return received, close_code, rest

    feed.start()
    before, close_code, after = asyncio.run(scenario())
    feed.join()
    assert close_code == 1001  # going away
    assert before + after == list(range(1, TOTAL + 1))
