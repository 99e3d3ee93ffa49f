"""Setting up and checking a synthetic import for the fault tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import peewee
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import Broadcaster, CompletionTracker, RedisTransport
from dramatiq_shared.cli import main
from dramatiq_shared.db import DatabaseOperations
from dramatiq_shared.db.models import init_database
from dramatiq_shared.stores import StatusHistory

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def workers(
    redis_url: str, database_url: str, *, processes: int = 2, **environ: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``dramatiq tests.faults.synthetic_app -p PROCESSES -t 4``, in a process group of
    its own (so a test can SIGKILL all of it), stopped with SIGTERM on the way out.

    Parameters:
      redis_url: The broker, completion and status Redis.
      database_url: The workers' database, perhaps through a proxy.
      processes: Worker processes. Default 2.
      environ: More environment variables, such as ``DRAMATIQ_SHARED_STATUS_*``.
    """
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, **environ}
    env.pop("RABBITMQ_URL", None)
    command = ["-m", "dramatiq", "tests.faults.synthetic_app", "-p", str(processes), "-t", "4"]
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)


def message(actor: str, *args: object, queue: str = "default") -> dramatiq.Message[object]:
    """A message for ``actor`` on ``queue``, as any producer would send it."""
    return dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})


def prepare(
    redis_url: str,
    postgres_url: str,
    import_id: str,
    messages: int,
    actor: str = "store",
    *,
    sender: dramatiq.Broker | None = None,
    queue: str = "default",
) -> peewee.Database:
    """Tables, the import, its expected total, and one ``actor`` message per item on
    ``queue``, sent through ``sender`` (default: a RedisBroker on ``redis_url``)."""
    assert main(["init-db", "--database", postgres_url]) == 0
    database = init_database(postgres_url)
    DatabaseOperations(database).create_or_update_import(import_id, total_notes=messages)
    client = redis.Redis.from_url(redis_url)
    tracker = CompletionTracker(Broadcaster(RedisTransport(client)), redis_client=client)
    tracker.expect(import_id, messages)
    tracker.broadcaster.close()
    sender = sender or RedisBroker(url=redis_url)
    for n in range(messages):
        sender.enqueue(message(actor, import_id, n, queue=queue))
    sender.close()
    return database


def endings(client: redis.Redis, import_id: str) -> list[str]:
    """The import's COMPLETED and FAILED events, from its stream."""
    events = RedisTransport(client).read(import_id, limit=100_000)
    return [e["status"] for e in events if e["context"] == "import" and e["status"] != "PROCESSING"]


def stored_event_ids(database: peewee.Database, import_id: str) -> list[int]:
    """The ids of the import's events in the database history, in order."""
    history = StatusHistory(database)
    ids: list[int] = []
    while True:
        page = history.read(import_id, after=ids[-1] if ids else 0, limit=1_000)
        if not page:
            return ids
        ids += [event["id"] for event in page]


def unpersisted(client: redis.Redis) -> dict[bytes, int]:
    """Each status batch streamed for the history and not yet persisted, with its size."""
    transport = RedisTransport(client)
    sizes = {}
    for token in client.zrange(transport.keys.unpersisted, 0, -1):
        kept = client.get(transport.keys.batch(token.decode()))
        if kept is not None:
            sizes[token] = len(json.loads(kept))
    return sizes


def executions(client: redis.Redis, import_id: str) -> dict[int, int]:
    """How many times each item's message ran (the synthetic app counts them)."""
    counted = client.hgetall(f"faults:executions:{import_id}")
    return {int(item): int(times) for item, times in counted.items()}
