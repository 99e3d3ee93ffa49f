"""The suite under the dramatiq CLI: 2 processes of 4 threads on Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import Broadcaster, CompletionTracker, RedisTransport
from dramatiq_shared.cli import main
from dramatiq_shared.db.models import Note, init_database
from dramatiq_shared.keys import Keys
from dramatiq_shared.metrics import render

from .conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]


def send(broker: RedisBroker, actor: str, queue: str, *args: object) -> None:
    broker.enqueue(
        dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
    )


def wait_for(condition: Callable[[], bool], seconds: float = 60) -> None:
    assert wait_until(condition, time.monotonic() + seconds, interval=0.1), "timed out"


def check_commands(
    redis_url: str,
    postgres_url: str,
    metrics_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `dramatiq-shared workers` and `health` and the metrics exporter show."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    capsys.readouterr()
    assert main(["workers"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("default,slow") == 2  # two worker processes, both queues
    assert "queue default: 0 ready, 0 delayed, 0 dead" in listing
    assert main(["health"]) == 0
    health = capsys.readouterr().out
    assert "2 live" in health
    assert "database" in health
    assert "down" not in health
    # Both processes' metrics, as the exporter serves them from their shared folder.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    scraped = render()[0].decode()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    name = "dramatiq_shared_db_operation_seconds_count"
    label = 'operation="DatabaseOperations.create_or_update_note"'
    line = next(line for line in scraped.splitlines() if line.startswith(f"{name}{{{label}}}"))
    assert float(line.split()[-1]) == 101  # 100 notes and the redelivered one


def completed_once(client: redis.Redis) -> bool:
    events = RedisTransport(client).read("imp-e2e", limit=10_000)
    endings = [e for e in events if e["context"] == "import" and e["status"] == "COMPLETED"]
    assert len(endings) <= 1
    return len(endings) == 1


def test_dramatiq_cli_workers_do_the_work_beat_and_stop_without_losing_any(
    redis_client: redis.Redis,
    redis_url: str,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert main(["init-db", "--database", postgres_url]) == 0
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": postgres_url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
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
    database = init_database(postgres_url)
    try:
        tracker = CompletionTracker(
            Broadcaster(RedisTransport(redis_client)), redis_client=redis_client
        )
        tracker.expect("imp-e2e", 100)
        tracker.broadcaster.close()
        for n in range(100):
            send(sender, "store_note", "default", "imp-e2e", f"note-{n}")
        send(sender, "store_note", "default", "imp-e2e", "note-7")  # a redelivery

        wait_for(lambda: Note.select().count() == 100 or workers.poll() is not None)
        assert workers.poll() is None, workers.stderr.read() if workers.stderr else ""
        wait_for(lambda: completed_once(redis_client))
        wait_for(lambda: len(list(redis_client.scan_iter(match=Keys().worker_pattern()))) == 2)
        check_commands(redis_url, postgres_url, metrics_dir, capsys, monkeypatch)

        # Slow messages in flight when the workers are told to stop.
        for n in range(30):
            send(sender, "slow", "slow", n)
        wait_for(lambda: redis_client.scard("e2e:slow-done") >= 4, 20)
        workers.send_signal(signal.SIGTERM)
        _, stderr = workers.communicate(timeout=60)
        done = redis_client.scard("e2e:slow-done")
        waiting = redis_client.hlen("dramatiq:slow.msgs")
        assert done + waiting == 30, stderr[-2000:]  # finished, or back in the queue
        beats = list(redis_client.scan_iter(match=Keys().worker_pattern()))
        assert not beats, stderr[-3000:]  # the heartbeats went with their workers
    finally:
        if workers.poll() is None:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.wait()
        sender.close()
        database.close_all()
