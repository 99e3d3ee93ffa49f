"""The relay SIGKILLed and restarted while 50 clients watch: each resumes with no gap
and no duplicate."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from dramatiq_shared.relay.auth import sign

from ..relay.conftest import SECRET, RelayProcess, frames
from ..relay.test_replay import TOTAL, publisher, watch

pytestmark = pytest.mark.faults

CLIENTS = 50


def test_fifty_clients_resume_exactly_after_the_relay_is_killed(
    relay_process: RelayProcess, redis_url: str
) -> None:
    start, stop = relay_process
    url = start()
    feed = publisher(redis_url, "imp-k", pause=0.01)
    first: list[int] = []
    back = asyncio.Event()

    async def client(number: int, session: aiohttp.ClientSession) -> list[int]:
        received = first if number == 0 else []
        try:
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_json(
                    {"type": "subscribe", "import_id": "imp-k", "token": sign("imp-k", SECRET)}
                )
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        received.extend(
                            f["id"] for f in frames(message.data) if f["type"] == "event"
                        )
        except (aiohttp.ClientError, ConnectionError):
            pass  # the relay died under us
        await back.wait()
        rest = await watch(
            url,
            "imp-k",
            last_event_id=received[-1] if received else 0,
            until=lambda ids: bool(ids) and ids[-1] >= TOTAL,
        )
        return received + rest

    async def saboteur() -> tuple[int, float]:
        """Kill the relay mid-stream and start it again; how far in, and how long it was down."""
        while len(first) < 1_500:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(stop, signal.SIGKILL)  # no goodbye to anyone
        killed_at = len(first)
        killed = time.monotonic()
        await asyncio.to_thread(start)
        back.set()
        return killed_at, time.monotonic() - killed

    async def scenario() -> tuple[list[list[int]], int, float]:
        async with aiohttp.ClientSession() as session:
            watching = [asyncio.ensure_future(client(n, session)) for n in range(CLIENTS)]
            await asyncio.sleep(0.5)  # everyone subscribed before the feed starts
            feed.start()
            killed_at, downtime = await saboteur()
            return await asyncio.gather(*watching), killed_at, downtime

    results, killed_at, downtime = asyncio.run(scenario())
    feed.join()
    expected = list(range(1, TOTAL + 1))
    assert all(ids == expected for ids in results), [len(ids) for ids in results]
    assert killed_at < TOTAL  # mid-stream
    print(
        f"\nrelay killed after {killed_at} of {TOTAL} events: {CLIENTS} clients resumed,"
        f" 0 gaps, 0 duplicates; relay back in {downtime:.1f} s"
    )
