"""A message that kills its worker process runs exactly max_deaths times, then is a
dead letter with its reason; the good messages around it, those that died beside it
included, are all done once.

Dramatiq's CLI does not start a killed worker process again (it logs ``Worker with
PID … exited unexpectedly (code -9). Shutting down...`` and exits), so each
``dramatiq`` command here runs under a loop that starts it again when it exits, as
systemd or Kubernetes would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import peewee
import pika
import pytest
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dramatiq_shared.db.models import Note
from dramatiq_shared.stores import DeadLetterStore

from ..conftest import wait_until
from .synthetic import ROOT, endings, executions, prepare

pytestmark = pytest.mark.faults

GOOD = 500
POISON = 250  # of the messages numbered 0 to GOOD: GOOD good ones and this one
MAX_DEATHS = 3  # setup_broker's default


@contextlib.contextmanager
def supervised(env: dict[str, str], log: Path) -> Iterator[list[int]]:
    """``dramatiq tests.faults.crash_app -p 1 -t 4``, started again whenever it exits,
    its output appended to ``log``; gives the exit codes of the runs that ended by
    themselves (a worker process died), not those stopped at the end."""
    exits: list[int] = []
    stop = threading.Event()
    running: list[subprocess.Popen[bytes]] = []
    stopped: set[int] = set()
    command = [sys.executable, "-m", "dramatiq", "tests.faults.crash_app", "-p", "1", "-t", "4"]

    def supervise() -> None:
        with log.open("ab") as output:
            while not stop.is_set():
                process = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=output, stderr=output, start_new_session=True
                )
                running[:] = [process]
                code = process.wait()
                if process.pid not in stopped:
                    exits.append(code)

    thread = threading.Thread(target=supervise, daemon=True)
    thread.start()
    try:
        yield exits
    finally:
        stop.set()
        for process in running:
            if process.poll() is None:
                stopped.add(process.pid)
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(60)
        thread.join(10)


def run_the_poison(
    redis_client: redis.Redis, env: dict[str, str], import_id: str, tmp_path: Path
) -> tuple[int, dict[int, int]]:
    """Two supervised worker commands until every message has its outcome; how many
    times a worker command ended by itself (its worker process killed), and how often
    each message ran."""
    with (
        supervised(env, tmp_path / "worker-1.log") as first,
        supervised(env, tmp_path / "worker-2.log") as second,
    ):
        deadline = time.monotonic() + 240
        finished = wait_until(
            lambda: Note.select().count() >= GOOD and endings(redis_client, import_id), deadline
        )
        assert finished, f"not all done: see {tmp_path}/worker-*.log"
    return len(first + second), executions(redis_client, import_id)


WORKER_DIED = "dramatiq_shared.errors.WorkerDiedError"


def assert_one_dead_letter_for_the_poison(
    redis_client: redis.Redis,
    database: peewee.Database,
    import_id: str,
    deaths: int,
    ran: dict[int, int],
    *,
    error_type: str = WORKER_DIED,
    reason: str = (
        f"worker died while processing it: {MAX_DEATHS} deliveries without an outcome, the last on "
    ),
) -> None:
    assert ran[POISON] == MAX_DEATHS, f"the poison ran {ran[POISON]} times"  # then never
    expected = MAX_DEATHS if error_type == WORKER_DIED else 0
    assert deaths == expected, f"{deaths} worker processes were killed"
    assert set(ran) == set(range(GOOD + 1))
    notes = [note.id for note in Note.select(Note.id)]
    assert sorted(notes) == sorted(f"{import_id}:{n}" for n in range(GOOD + 1) if n != POISON)
    letters = DeadLetterStore(database).list(limit=10)
    assert [letter.actor_name for letter in letters] == ["crash_or_store"]  # no bystander
    (letter,) = letters
    assert letter.message["args"] == [import_id, POISON]
    assert letter.error_type == error_type
    assert letter.reason.startswith(reason), letter.reason
    assert redis_client.hgetall(f"faults:failed:{import_id}") == {
        str(POISON).encode(): error_type.encode()
    }
    assert endings(redis_client, import_id) == ["FAILED"]  # the import's one ending
    bystanders = sum(1 for n, times in ran.items() if times > 1 and n != POISON)
    if deaths:
        assert bystanders > 0, "nothing ran beside the poison: the test shows nothing"
    print(
        f"\npoison ran {ran[POISON]} times, killing {deaths} worker processes;"
        f" {bystanders} good messages ran again after dying beside it, none dead-lettered;"
        f" {len(notes)} notes, no duplicate"
    )


def environment(redis_url: str, postgres_url: str, **more: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": postgres_url}
    env.pop("RABBITMQ_URL", None)
    return {**env, "CRASH_POISON": str(POISON), **more}


def test_a_message_that_kills_its_worker_on_redis_is_dead_lettered_after_max_deaths(
    redis_client: redis.Redis, redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    import_id = "imp-crash"
    database = prepare(redis_url, postgres_url, import_id, GOOD + 1, actor="crash_or_store")
    env = environment(redis_url, postgres_url)
    try:
        deaths, ran = run_the_poison(redis_client, env, import_id, tmp_path)
        assert_one_dead_letter_for_the_poison(redis_client, database, import_id, deaths, ran)
    finally:
        database.close_all()


def test_a_message_that_kills_its_worker_on_rabbitmq_is_dead_lettered_after_max_deaths(
    redis_client: redis.Redis, redis_url: str, postgres_url: str, rabbitmq_url: str, tmp_path: Path
) -> None:
    import_id = "imp-crash-amqp"
    queue = f"ds_crash_{uuid.uuid4().hex[:8]}"
    sender = RabbitmqBroker(url=rabbitmq_url)
    sender.declare_queue(queue)
    database = prepare(
        redis_url, postgres_url, import_id, GOOD + 1, "crash_or_store", sender=sender, queue=queue
    )
    env = environment(redis_url, postgres_url, RABBITMQ_URL=rabbitmq_url, CRASH_QUEUE=queue)
    try:
        deaths, ran = run_the_poison(redis_client, env, import_id, tmp_path)
        assert_one_dead_letter_for_the_poison(redis_client, database, import_id, deaths, ran)
    finally:
        database.close_all()
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(rabbitmq_url))) as amqp:
            channel = amqp.channel()
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)


def test_a_message_that_exhausts_memory_under_a_cap_is_retried_as_any_failure(
    redis_client: redis.Redis, redis_url: str, postgres_url: str, tmp_path: Path
) -> None:
    # A MemoryError is an exception, not a death: it takes the retry path, and the
    # message is dead-lettered for it once its attempts are used, its process alive.
    import_id = "imp-memory"
    database = prepare(redis_url, postgres_url, import_id, GOOD + 1, actor="crash_or_store")
    env = environment(redis_url, postgres_url, CRASH_MODE="memory")
    try:
        deaths, ran = run_the_poison(redis_client, env, import_id, tmp_path)
        assert_one_dead_letter_for_the_poison(
            redis_client,
            database,
            import_id,
            deaths,
            ran,
            error_type="MemoryError",
            reason=f"all {MAX_DEATHS} attempts failed",
        )
    finally:
        database.close_all()
