"""Running a relay for tests: in this process on a real port, or as its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from dramatiq_shared.relay import RedisSource, create_app

from ..conftest import free_port

SECRET = "test-secret-of-32-bytes-at-least!"

RelayProcess = tuple[Callable[[], str], Callable[..., None]]


class RunningRelay:
    """A relay app served by a thread of its own, on 127.0.0.1 and a free port."""

    def __init__(self, make_app: Any) -> None:
        self._make_app = make_app
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.app: web.Application | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.app = self._make_app()
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> RunningRelay:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def redis_relay(redis_client: redis.Redis, redis_url: str) -> Iterator[RunningRelay]:
    """A relay on the test Redis database."""

    def make() -> web.Application:
        client = aioredis.from_url(redis_url)
        return create_app(RedisSource(client), secret=SECRET, breaker_client=client)

    with RunningRelay(make) as relay:
        yield relay


def frames(data: str) -> list[dict[str, Any]]:
    """The frames of one websocket message: one object, or an array of them."""
    loaded = json.loads(data)
    return loaded if isinstance(loaded, list) else [loaded]


async def collect(
    ws: aiohttp.ClientWebSocketResponse, *, until: Any, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Frames received until ``until(frames so far)`` holds."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not until(received):
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            received.extend(frames(message.data))
    return received


@pytest.fixture
def relay_process(redis_client: redis.Redis, redis_url: str) -> Iterator[RelayProcess]:
    """``python -m dramatiq_shared.relay`` on one port: ``start()`` it (returns its URL)
    and ``stop(sig)`` it, again and again. SIGTERM, the default, closes its sockets with
    1001 first; SIGKILL says goodbye to no one."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DRAMATIQ_SHARED_SECRET": SECRET, "REDIS_URL": redis_url}
    env.pop("DATABASE_URL", None)
    env.pop("DRAMATIQ_SHARED_DB_URL", None)
    running: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        running.append(
            subprocess.Popen(  # output unread: a chatty relay must not fill a pipe
                [sys.executable, "-m", "dramatiq_shared.relay", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for _ in range(400):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                return url
            except OSError:
                time.sleep(0.025)
        raise RuntimeError("the relay did not start")

    def stop(sig: signal.Signals = signal.SIGTERM) -> None:
        running[-1].send_signal(sig)
        running[-1].wait(30)

    yield start, stop
    for process in running:
        if process.poll() is None:
            process.kill()
            process.wait()
