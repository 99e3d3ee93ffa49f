"""Poison messages on Redis with real worker threads: each is dead-lettered with a clear
reason, in Dramatiq's dead-letter queue and the dead-letters table, and the worker goes
on with every good message around them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import (
    ConfigError,
    MessageTooLargeError,
    ValidationError,
    close_workers,
    create_worker,
    get_worker_status,
    setup_broker,
)
from dramatiq_shared.db.dead_letters import DeadLetterStore

pytestmark = pytest.mark.faults

GOOD = 200


def test_poison_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    redis_broker: RedisBroker, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'dead.db'}"
    broker = setup_broker(
        redis_broker,
        database=database,
        redis_url=redis_url,
        retry={"base_delay": 10, "max_delay": 50},
        max_message_size=64 * 1024,
    )
    done: set[int] = set()

    @dramatiq.actor(broker=broker)
    def store(import_id: str, n: int) -> None:
        if not isinstance(n, int):
            raise ValidationError.invalid("n", n, "an int")
        done.add(n)

    # An undecodable body, as a foreign producer or corruption leaves it.
    redis_client.hset("dramatiq:default.msgs", "not-a-message", b"\xff\x00{garbage")
    redis_client.rpush("dramatiq:default", "not-a-message")
    # A message for an actor no worker declares.
    broker.enqueue(
        dramatiq.Message(queue_name="default", actor_name="nobody", args=(), kwargs={}, options={})
    )
    misfit = store.send_with_options(args=("imp-1",))  # a required argument missing
    mistyped = store.send("imp-1", "seven")  # the wrong type
    oversized = dramatiq.Message(
        queue_name="default",
        actor_name="store",
        args=("imp-1", "x" * 100_000),
        kwargs={},
        options={},
    )
    RedisBroker(url=redis_url).enqueue(oversized)  # a producer without the limit
    with pytest.raises(MessageTooLargeError, match="more than max_message_size"):
        store.send("imp-1", "y" * 100_000)  # refused at send
    for n in range(GOOD):
        store.send("imp-1", n)

    worker = create_worker(broker, worker_threads=4)
    try:
        store_rows = DeadLetterStore(database)
        deadline = time.monotonic() + 30
        while (len(done) < GOOD or len(store_rows.list()) < 5) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done == set(range(GOOD))
        status = get_worker_status(worker)
        assert status.running
        assert status.threads == 4
    finally:
        close_workers([worker])

    reasons = {row.message_id: (row.error_type, row.reason) for row in store_rows.list()}
    assert reasons == {
        "not-a-message": (
            "dramatiq.errors.DecodeError",
            "its body could not be decoded as a message",
        ),
        reasons_of(redis_client, "nobody"): (
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
    (too_big,) = [row for row in store_rows.list() if row.message_id == oversized.message_id]
    assert "more than max_message_size (65,536)" in too_big.error_message
    # Dramatiq's own dead-letter queue holds all five, and nothing is left anywhere else.
    assert redis_client.zcard("dramatiq:default.XQ") == 5
    assert redis_client.hlen("dramatiq:default.msgs") == 0
    assert not redis_client.keys("dramatiq:__acks__*")


def reasons_of(client: redis.Redis, actor: str) -> str:
    """The id of the dead-lettered message for ``actor``, read from the dead-letter queue."""
    for raw in client.hvals("dramatiq:default.XQ.msgs"):
        try:
            fields = json.loads(raw)
        except ValueError:
            continue
        if fields["actor_name"] == actor:
            return str(fields["message_id"])
    raise AssertionError(f"no dead letter for {actor}")


def test_a_bad_max_message_size_is_refused_at_construction(redis_broker: RedisBroker) -> None:
    with pytest.raises(ConfigError, match="max_message_size must be an int >= 1, got 0"):
        setup_broker(redis_broker, database="sqlite://", max_message_size=0)
