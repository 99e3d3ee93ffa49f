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

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent
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


def an_import(
    import_id: str, *, notes: int, lines: int, failing: frozenset[int] = frozenset()
) -> list[StatusEvent]:
    """The events of an import of ``notes`` notes of ``lines`` lines each, as the recipe
    example publishes them: a note's PROCESSING, one event a line, its COMPLETED (FAILED
    for the notes in ``failing``), the import's count; every third note then gets a late
    line event after its end (its two last lines finished at once), and the import ends."""
    events: list[StatusEvent] = []
    for n in range(1, notes + 1):
        note = f"n-{n}"
        events.append(
            StatusEvent(
                import_id,
                NoteStatus.PROCESSING,
                note_id=note,
                context="note",
                indent_level=1,
                message=f"recipe {n}: {lines} lines",
                current_count=0,
                total_count=lines,
                metadata={"title": f"Recipe {n}"},
            )
        )
        events.extend(
            StatusEvent(
                import_id,
                NoteStatus.PROCESSING,
                note_id=note,
                context="line",
                indent_level=2,
                message=f"CORRECT: line {line} of recipe {n}",
                current_count=line,
                total_count=lines,
            )
            for line in range(1, lines)
        )
        failed = n in failing
        events.append(
            StatusEvent(
                import_id,
                NoteStatus.FAILED if failed else NoteStatus.COMPLETED,
                note_id=note,
                context="note",
                indent_level=1,
                message="ParseError: no ingredients found" if failed else f"{lines} lines",
                current_count=lines,
                total_count=lines,
            )
        )
        if n % 3 == 0:
            events.append(
                StatusEvent(
                    import_id,
                    NoteStatus.PROCESSING,
                    note_id=note,
                    context="line",
                    indent_level=2,
                    message=f"CORRECT: line {lines} of recipe {n}",
                    current_count=lines,
                    total_count=lines,
                )
            )
        events.append(
            StatusEvent(
                import_id,
                NoteStatus.PROCESSING,
                context="import",
                current_count=n,
                total_count=notes,
                message=f"{n} of {notes} done",
            )
        )
    events.append(
        StatusEvent(
            import_id,
            NoteStatus.FAILED if failing else NoteStatus.COMPLETED,
            context="import",
            current_count=notes,
            total_count=notes,
            message=f"{len(failing)} of {notes} failed" if failing else "all done",
        )
    )
    return events


def publish_all(
    transport: RedisTransport, events: list[StatusEvent], *, batch: int = 200
) -> list[int]:
    """Publish ``events`` in batches as a broadcaster would; the ids they got."""
    ids: list[int] = []
    for start in range(0, len(events), batch):
        ids += transport.append(events[start : start + batch], int(time.time() * 1000))
    return ids
