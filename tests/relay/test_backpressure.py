"""A client that cannot keep up is cut off; it never slows the others; memory stays bounded."""

from __future__ import annotations

import asyncio
import socket
import threading

import aiohttp
import redis
import redis.asyncio as aioredis
from aiohttp import web

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent
from dramatiq_shared.relay import RedisSource, create_app
from dramatiq_shared.relay.app import HUB
from dramatiq_shared.status.auth import sign

from .conftest import SECRET, RunningRelay, frames

EVENTS = 2_000
CLIENTS = 50
MAX_QUEUE = 500


async def stuck_client(url: str) -> socket.socket:
    """A websocket client with a tiny receive buffer that never reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.recv(4096)  # the 101 answer
    subscribe = (
        b'{"type":"subscribe","import_id":"imp-s","token":"'
        + sign("imp-s", SECRET).encode()
        + b'"}'
    )
    mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as it is
    sock.sendall(bytes([0x81, 0x80 | 126]) + len(subscribe).to_bytes(2, "big") + mask + subscribe)
    return sock


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

    padding = "x" * 1_900  # events big enough to fill the stuck client's buffers
    with RunningRelay(make) as relay:

        async def scenario() -> tuple[list[list[int]], bytes, float]:
            stuck = await stuck_client(relay.url)
            async with aiohttp.ClientSession() as session:
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
                            StatusEvent(
                                "imp-s", NoteStatus.PROCESSING, message=padding, current_count=n
                            )
                            for n in range(start, start + 50)
                        ],
                        1_000,
                    )
                received = await asyncio.gather(*watchers)
                sampled.set()
            # Read what reached the stuck client, up to the relay's closing frame.
            stuck.settimeout(10)
            tail = b""
            while (4001).to_bytes(2, "big") not in tail:
                chunk = await asyncio.to_thread(stuck.recv, 1 << 20)
                if not chunk:
                    break
                tail = (tail + chunk)[-4096:]
            stuck.close()
            return received, tail

        hub = relay.app[HUB] if relay.app else None
        assert hub is not None
        longest = [0]
        sampled = threading.Event()

        def sample_queues() -> None:
            while not sampled.wait(0.005):
                queues = [len(c.queue) for c in list(hub.connections)]
                longest[0] = max([longest[0], *queues])

        received, tail = asyncio.run(scenario())
        assert all(ids == list(range(1, EVENTS + 1)) for ids in received)
        # No connection ever held more than its bound: relay memory stays bounded.
        assert 0 < longest[0] <= MAX_QUEUE + 1
    # The stuck client got the close frame 4001 (0x0FA1) after what fitted in its buffers.
    closing = tail[tail.rindex(b"\x88") :]  # a close frame: 0x88, length, code 4001
    assert closing[2:4] == (4001).to_bytes(2, "big")
    assert b"too slow" in closing
