"""A client that cannot keep up is cut off; it never slows the others; memory stays bounded."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import web

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.relay import RedisSource, create_app
from dramatiq_shared.relay.app import HUB
from dramatiq_shared.relay.auth import sign

from .conftest import SECRET, RunningRelay, frames

EVENTS = 2_000
CLIENTS = 50
MAX_QUEUE = 500


async def stuck_client(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """An admin client of every import, which then stops reading."""
    ws = await session.ws_connect(f"{url}/ws", max_msg_size=0)
    await ws.send_json({"type": "subscribe", "import_id": "*", "token": sign("*", SECRET)})
    return ws


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """Read what reached the stuck client, up to the relay's closing frame."""
    async with asyncio.timeout(30):
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return message.data, str(message.extra)


async def normal_client(url: str, session: aiohttp.ClientSession) -> list[int]:
    ids: list[int] = []
    async with session.ws_connect(f"{url}/ws") as ws:
        await ws.send_json(
            {"type": "subscribe", "import_id": "imp-s", "token": sign("imp-s", SECRET)}
        )
        async with asyncio.timeout(60):
            while len(ids) < EVENTS:
                message = await ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"a normal client was closed: {message}")
                ids.extend(f["id"] for f in frames(message.data) if f["type"] == "event")
    return ids


def test_a_slow_client_is_cut_off_while_50_others_receive_everything(
    redis_client: redis.Redis, redis_url: str
) -> None:
    def make() -> web.Application:
        return create_app(
            RedisSource(aioredis.from_url(redis_url)), secret=SECRET, max_queue=MAX_QUEUE
        )

    padding = {"filler": "x" * 15_000}  # big events, only for the stuck client
    with RunningRelay(make) as relay:

        async def scenario() -> tuple[list[list[int]], tuple[int | None, str]]:
            async with aiohttp.ClientSession() as session:
                stuck = await stuck_client(session, relay.url)
                watchers = [
                    asyncio.ensure_future(normal_client(relay.url, session)) for _ in range(CLIENTS)
                ]
                await asyncio.sleep(0.5)
                sampling = threading.Thread(target=sample_queues, daemon=True)
                sampling.start()
                transport = RedisTransport(redis_client)
                for start in range(0, EVENTS, 50):
                    await asyncio.to_thread(
                        transport.append,
                        [
                            StatusEvent("imp-s", NoteStatus.PROCESSING, current_count=n)
                            for n in range(start, start + 50)
                        ]
                        + [StatusEvent("imp-big", NoteStatus.PROCESSING, metadata=padding)] * 30,
                        1_000,
                    )
                received = await asyncio.gather(*watchers)
                sampled.set()
                closed = await close_code(stuck)
            return received, closed

        hub = relay.app[HUB] if relay.app else None
        assert hub is not None
        longest = [0]
        sampled = threading.Event()

        def sample_queues() -> None:
            while not sampled.wait(0.005):
                queues = [len(c.queue) for c in list(hub.connections)]
                longest[0] = max([longest[0], *queues])

        received, (code, reason) = asyncio.run(scenario())
        assert all(ids == list(range(1, EVENTS + 1)) for ids in received)
        # No connection ever held more than its hard bound: relay memory stays bounded.
        assert 0 < longest[0] <= 4 * MAX_QUEUE
    # The stuck client got the close frame 4001 (0x0FA1) after what fitted in its buffers.
    assert (code, reason) == (4001, "too slow; resume with last_event_id")
