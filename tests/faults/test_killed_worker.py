"""A worker process SIGKILLed mid-run: its messages come back, and no row is doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import Broadcaster, CompletionTracker, RedisTransport
from dramatiq_shared.cli import main
from dramatiq_shared.db import DatabaseOperations
from dramatiq_shared.db.models import Note, init_database

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 10_000
IMPORT = "imp-kill"


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "tests.faults.synthetic_app", "-p", "1", "-t", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def endings(client: redis.Redis) -> list[str]:
    events = RedisTransport(client).read(IMPORT, limit=100_000)
    return [e["status"] for e in events if e["context"] == "import" and e["status"] != "PROCESSING"]


def test_a_sigkilled_worker_loses_nothing_and_doubles_nothing(
    redis_client: redis.Redis, redis_url: str, postgres_url: str
) -> None:
    assert main(["init-db", "--database", postgres_url]) == 0
    database = init_database(postgres_url)
    DatabaseOperations(database).create_or_update_import(IMPORT, total_notes=MESSAGES)
    tracker = CompletionTracker(
        Broadcaster(RedisTransport(redis_client)), redis_client=redis_client
    )
    tracker.expect(IMPORT, MESSAGES)
    tracker.broadcaster.close()
    sender = RedisBroker(url=redis_url)
    for n in range(MESSAGES):
        sender.enqueue(
            dramatiq.Message(
                queue_name="default", actor_name="store", args=(IMPORT, n), kwargs={}, options={}
            )
        )
    sender.close()

    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": postgres_url}
    env.pop("RABBITMQ_URL", None)
    victim, survivor = start_worker(env), start_worker(env)
    try:
        deadline = time.monotonic() + 120
        while Note.select().count() < MESSAGES // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)  # mid-job: no clean-up of any kind
        killed_at = time.monotonic()
        in_flight = MESSAGES - Note.select().count()
        while Note.select().count() < MESSAGES and time.monotonic() < deadline:
            time.sleep(0.1)
        recovered = time.monotonic() - killed_at
        assert Note.select().count() == MESSAGES, "messages were lost"
        while not endings(redis_client) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for worker in (victim, survivor):
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(60)
        database.close_all()

    executions = {
        int(k): int(v) for k, v in redis_client.hgetall(f"faults:executions:{IMPORT}").items()
    }
    assert set(executions) == set(range(MESSAGES))
    redelivered = sum(count - 1 for count in executions.values())
    assert endings(redis_client) == ["COMPLETED"]  # once, though some ran twice
    assert redis_client.zcard("dramatiq:default.XQ") == 0
    print(
        f"\nkilled worker: {in_flight} messages not yet done, {redelivered} run twice,"
        f" 0 lost, 0 duplicate rows, all done {recovered:.1f} s after the kill"
    )
