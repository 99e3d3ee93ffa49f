"""The suite under the dramatiq CLI: 2 processes of 4 threads on Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import RedisTransport
from dramatiq_shared.cli import main
from dramatiq_shared.db.models import Note, init_database

ROOT = Path(__file__).resolve().parents[1]


def send(broker: RedisBroker, actor: str, queue: str, *args: object) -> None:
    broker.enqueue(
        dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
    )


def wait_for(condition: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)
    assert condition(), "timed out"  # type: ignore[operator]


def test_dramatiq_cli_workers_do_the_work_beat_and_stop_without_losing_any(
    redis_client: redis.Redis,
    redis_url: str,
    postgres_url: str,
    capsys: object,
    monkeypatch: object,
) -> None:
    assert main(["init-db", "--database", postgres_url]) == 0
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": postgres_url}
    env.pop("RABBITMQ_URL", None)
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "tests.worker_app", "-p", "2", "-t", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its worker processes can be killed with it
    )
    sender = RedisBroker(url=redis_url)
    try:
        # The completion tracker expects the import's 100 notes.
        from dramatiq_shared import Broadcaster, CompletionTracker  # noqa: PLC0415

        tracker = CompletionTracker(
            Broadcaster(RedisTransport(redis_client)), redis_client=redis_client
        )
        tracker.expect("imp-e2e", 100)
        tracker.broadcaster.close()
        for n in range(100):
            send(sender, "store_note", "default", "imp-e2e", f"note-{n}")
        send(sender, "store_note", "default", "imp-e2e", "note-7")  # a redelivery

        database = init_database(postgres_url)
        wait_for(lambda: Note.select().count() == 100 or workers.poll() is not None)
        assert workers.poll() is None, workers.stderr.read() if workers.stderr else ""
        events = RedisTransport(redis_client).read("imp-e2e", limit=10_000)
        wait_for(
            lambda: any(
                e["status"] == "COMPLETED" and e["context"] == "import"
                for e in RedisTransport(redis_client).read("imp-e2e", limit=10_000)
            )
        )
        events = RedisTransport(redis_client).read("imp-e2e", limit=10_000)
        assert (
            sum(1 for e in events if e["context"] == "import" and e["status"] == "COMPLETED") == 1
        )

        wait_for(
            lambda: len(list(redis_client.scan_iter(match="dramatiq_shared:worker:*"))) == 2, 20
        )
        monkeypatch.setenv("REDIS_URL", redis_url)  # type: ignore[attr-defined]
        monkeypatch.setenv("DATABASE_URL", postgres_url)  # type: ignore[attr-defined]
        capsys.readouterr()  # type: ignore[attr-defined]
        assert main(["workers"]) == 0
        listing = capsys.readouterr().out  # type: ignore[attr-defined]
        assert listing.count("default,slow") == 2 or listing.count("slow,default") == 2
        assert "queue default: 0 ready, 0 delayed, 0 dead" in listing
        assert main(["health"]) == 0
        health = capsys.readouterr().out  # type: ignore[attr-defined]
        assert "redis     ok" in health or "redis" in health
        assert "2 live" in health
        assert "database" in health
        assert "down" not in health

        # Slow messages in flight when the workers are told to stop.
        for n in range(30):
            send(sender, "slow", "slow", n)
        wait_for(lambda: redis_client.scard("e2e:slow-done") >= 4, 20)
        workers.send_signal(signal.SIGTERM)
        _, stderr = workers.communicate(timeout=60)
        done = redis_client.scard("e2e:slow-done")
        waiting = redis_client.hlen("dramatiq:slow.msgs")
        assert done + waiting == 30, stderr[-2000:]  # finished, or back in the queue
        beats = list(redis_client.scan_iter(match="dramatiq_shared:worker:*"))
        assert not beats, stderr[-3000:]  # the heartbeats went with their workers
        database.close_all()
    finally:
        if workers.poll() is None:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.wait()
        sender.close()
