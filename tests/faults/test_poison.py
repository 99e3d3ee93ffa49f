"""Poison messages among good ones, on a real ``dramatiq`` worker process: each is
dead-lettered with a clear reason, in Dramatiq's dead-letter queue and the dead-letters
table, and the worker goes on with every good message around them."""

from __future__ import annotations

import time

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared.db.models import Note
from dramatiq_shared.stores import DeadLetterStore

from ..conftest import wait_until
from .synthetic import endings, message, prepare, workers

pytestmark = pytest.mark.faults

GOOD = 200
IMPORT = "imp-poison"


def test_poison_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    redis_client: redis.Redis, redis_url: str, postgres_url: str
) -> None:
    database = prepare(redis_url, postgres_url, IMPORT, GOOD)
    # An undecodable body, as a foreign producer or corruption leaves it.
    redis_client.hset("dramatiq:default.msgs", "not-a-message", b"\xff\x00{garbage")
    redis_client.rpush("dramatiq:default", "not-a-message")
    unknown = message("nobody")  # an actor no worker declares
    misfit = message("store", IMPORT)  # a required argument missing
    mistyped = message("store", IMPORT, "seven")  # the wrong type
    oversized = message("store", IMPORT, "x" * 100_000)  # over the workers' 64 KiB
    producer = RedisBroker(url=redis_url)  # a producer without the limit
    for poison in (unknown, misfit, mistyped, oversized):
        producer.enqueue(poison)
    producer.close()

    dead_letters = DeadLetterStore(database)
    try:
        with workers(redis_url, postgres_url, processes=1) as worker:
            deadline = time.monotonic() + 60
            wait_until(
                lambda: Note.select().count() >= GOOD and len(dead_letters.list()) >= 5, deadline
            )
            assert Note.select().count() == GOOD
            wait_until(lambda: endings(redis_client, IMPORT), deadline)
            assert worker.poll() is None  # still running
        rows = dead_letters.list()
        reasons = {row.message_id: (row.error_type, row.reason) for row in rows}
        (too_big,) = [row for row in rows if row.message_id == oversized.message_id]
    finally:
        database.close_all()

    assert reasons == {
        "not-a-message": (
            "dramatiq.errors.DecodeError",
            "its body could not be decoded as a message",
        ),
        unknown.message_id: (
            "dramatiq.errors.ActorNotFound",
            "no actor 'nobody' is declared in this worker",
        ),
        misfit.message_id: (
            "TypeError",
            "the message's arguments do not fit store(import_id, n):"
            " missing a required argument: 'n'",
        ),
        mistyped.message_id: (
            "dramatiq_shared.errors.ValidationError",
            "ValidationError is not retryable",
        ),
        oversized.message_id: (
            "dramatiq_shared.errors.MessageTooLargeError",
            "MessageTooLargeError is not retryable",
        ),
    }
    assert "more than max_message_size (65,536)" in too_big.error_message
    assert endings(redis_client, IMPORT) == ["COMPLETED"]  # the good ones, once
    # Dramatiq's own dead-letter queue holds all five, and nothing is left anywhere else.
    assert redis_client.zcard("dramatiq:default.XQ") == 5
    assert redis_client.hlen("dramatiq:default.msgs") == 0
    assert not redis_client.keys("dramatiq:__acks__*")
