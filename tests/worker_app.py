"""A user module for the end-to-end test: ``dramatiq tests.worker_app -p 2 -t 4``.

It calls setup_broker() at import, as an application would, with REDIS_URL and
DATABASE_URL from the environment the test gives it.
"""

from __future__ import annotations

import os
import time

import dramatiq

from dramatiq_shared import get_stack, setup_broker
from dramatiq_shared.db import DatabaseOperations, NoteData

broker = setup_broker()
stack = get_stack(broker)
operations = DatabaseOperations(stack.database)
SLOW_DONE = os.environ.get("SLOW_DONE_KEY", "e2e:slow-done")


@dramatiq.actor(max_attempts=3)
def store_note(import_id: str, note_id: str) -> None:
    operations.create_or_update_import(import_id)
    operations.create_or_update_note(note_id, NoteData(import_id=import_id, title=note_id))
    stack.completion.mark_done(import_id, note_id)


@dramatiq.actor(queue_name="slow")
def slow(n: int) -> None:
    time.sleep(0.5)
    assert stack.redis is not None
    stack.redis.sadd(SLOW_DONE, n)
