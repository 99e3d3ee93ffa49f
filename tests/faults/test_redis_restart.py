"""Redis restarted mid-run (persistence on): the workers reconnect and nothing is lost."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dramatiq_shared import RedisTransport
from dramatiq_shared.db.models import Note

from ..conftest import free_port
from .synthetic import endings, executions, prepare, stored_event_ids, workers

pytestmark = [pytest.mark.faults, pytest.mark.redis]

MESSAGES = 10_000
IMPORT = "imp-restart"


class PersistentRedis:
    """A redis-server of the test's own with an append-only file fsynced on every write."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(folder),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PersistentRedis]:
    server = PersistentRedis(tmp_path)
    try:
        server.start()
    except FileNotFoundError as error:
        pytest.fail(f"redis-server is not installed: {error}")
    yield server
    server.stop()


def test_redis_restarted_mid_run_loses_nothing(
    persistent_redis: PersistentRedis, postgres_url: str
) -> None:
    client = redis.Redis.from_url(persistent_redis.url)
    database = prepare(persistent_redis.url, postgres_url, IMPORT, MESSAGES)

    try:
        with workers(persistent_redis.url, postgres_url):
            deadline = time.monotonic() + 180
            while Note.select().count() < MESSAGES // 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            persistent_redis.stop()
            stopped_at = time.monotonic()
            in_flight = MESSAGES - Note.select().count()
            time.sleep(2)
            persistent_redis.start()
            while Note.select().count() < MESSAGES and time.monotonic() < deadline:
                time.sleep(0.1)
            recovered = time.monotonic() - stopped_at
            assert Note.select().count() == MESSAGES, "messages were lost"
            while not endings(client, IMPORT) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        database.close_all()

    ran = executions(client, IMPORT)
    assert set(ran) == set(range(MESSAGES))
    counts = client.hgetall(f"dramatiq_shared:completion:{IMPORT}")
    assert endings(client, IMPORT) == ["COMPLETED"], counts
    # The stream keeps the newest events; the database all of them, without a gap.
    last = RedisTransport(client).read(IMPORT, limit=100_000)[-1]["id"]
    assert stored_event_ids(database, IMPORT) == list(range(1, last + 1))
    assert client.zcard("dramatiq:default.XQ") == 0
    print(
        f"\nredis restart: {in_flight} messages not yet done, Redis down 2 s,"
        f" {sum(ran.values()) - MESSAGES} run twice, 0 lost, 0 duplicate rows,"
        f" all done {recovered:.1f} s after it stopped"
    )
