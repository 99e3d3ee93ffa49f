"""The synthetic pipeline of the fault tests: ``dramatiq tests.faults.synthetic_app``.

One actor stores a note per message and marks it done for its import, as a real
pipeline step does. The broker is tuned so a killed worker's messages come back in
seconds, not Dramatiq's default minute: a worker silent for 2 s counts as dead, and
one command in ten runs the maintenance that requeues its messages.

``store_guarded`` is the same step behind a ``database`` circuit breaker, for the
database outage: while it is open, messages wait without using their attempts.
Messages over 64 KiB are refused, for the poison test.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import ValidationError, get_stack, setup_broker
from dramatiq_shared.db import DatabaseOperations, NoteData

broker = setup_broker(
    RedisBroker(url=os.environ["REDIS_URL"], heartbeat_timeout=2_000, maintenance_chance=100_000),
    breakers={
        "database": {"failure_threshold": 5, "reset_timeout": 1_000, "max_reset_timeout": 4_000}
    },
    max_message_size=64 * 1024,
)
stack = get_stack(broker)
operations = DatabaseOperations(stack.database)
assert stack.redis is not None
executions = stack.redis


@dramatiq.actor(max_attempts=5, base_delay=100)
def store(import_id: str, n: int) -> None:
    _store(import_id, n)


@dramatiq.actor(max_attempts=5, base_delay=100, breaker="database")
def store_guarded(import_id: str, n: int) -> None:
    _store(import_id, n)


def _store(import_id: str, n: int) -> None:
    if not isinstance(n, int):
        raise ValidationError.invalid("n", n, "an int")
    executions.hincrby(f"faults:executions:{import_id}", str(n))
    time.sleep(0.001)  # some work, so messages are in flight when the fault comes
    operations.create_or_update_note(
        f"{import_id}:{n}", NoteData(import_id=import_id, title=str(n))
    )
    stack.completion.mark_done(import_id, str(n))
