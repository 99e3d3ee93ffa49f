"""DeathLimit: a message that comes back from a worker that died is known, runs alone,
and at max_deaths is failed before it runs.

A worker process that dies leaves exactly what a ``DeathLimit`` of its own leaves when
its consumer fetched the message (and, for a message that came back, its
``before_process_message`` ran) and nothing after: the count in Redis, and the message
back in the queue. The tests make such deaths with a ``DeathLimit`` standing for each
dead process (its isolation dies with it); the multi-process tests with real SIGKILLs,
on Redis and on RabbitMQ, are in tests/faults/test_crash_loop.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import PickleEncoder

from dramatiq_shared import ConfigError, DeathLimit, setup_broker
from dramatiq_shared.errors import ActorFailedError
from dramatiq_shared.keys import DEFAULT_NAMESPACE, Keys
from dramatiq_shared.middleware.death_limit import _redis_message_id
from dramatiq_shared.testing import Suite

from ..conftest import wait_until


def died_with(
    broker: dramatiq.Broker,
    client: redis.Redis,
    queued: Any,
    deaths: int,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> None:
    """``deaths`` worker processes took ``queued`` (the message as the broker enqueued
    it) and died before its outcome: the first fetched it, each later one ran it alone."""
    for n in range(deaths):
        dead = DeathLimit(client, max_deaths=None if n == 0 else deaths + 1, namespace=namespace)
        dead._mark([queued.encode()])  # its consumer fetched it
        if n:
            dead.before_process_message(broker, MessageProxy(queued))  # alone, then died


def killed(suite: Suite, client: redis.Redis, queued: Any, deaths: int) -> None:
    """``died_with`` on the suite's broker and keys; call it with the worker paused, or
    the worker may take the message before its deaths are counted."""
    died_with(suite.broker, client, queued, deaths, namespace=suite.keys.namespace)


def test_a_message_at_max_deaths_is_failed_before_it_runs_and_reported_as_any_final_failure(
    suite: Suite, redis_client: redis.Redis, records: list[dict[str, Any]]
) -> None:
    ran: list[int] = []
    exhausted: list[dict[str, Any]] = []

    @dramatiq.actor(broker=suite.broker)
    def gave_up(message: dict[str, Any], info: dict[str, Any]) -> None:
        exhausted.append(info)

    @dramatiq.actor(broker=suite.broker, on_retry_exhausted="gave_up")
    def fragile(n: int, import_id: str) -> None:
        ran.append(n)

    deliveries = suite.keys.deliveries
    suite.stack.completion.expect("imp-died", 1)
    with suite.paused():
        poison = suite.broker.enqueue(fragile.message(1, "imp-died"))
        killed(suite, redis_client, poison, 3)
        assert redis_client.hlen(deliveries) == 1
    with pytest.raises(ActorFailedError, match="actor 'fragile' failed: WorkerDiedError: worker"):
        suite.run()

    assert ran == []  # not a fourth time
    (info,) = exhausted
    assert info["error_type"] == "dramatiq_shared.errors.WorkerDiedError"
    assert info["reason"].startswith(
        "worker died while processing it: 3 deliveries without an outcome, the last on "
    )
    (letter,) = suite.dead_letters
    assert letter.message_id == poison.message_id
    assert letter.reason == info["reason"]
    assert letter.error_history[-1]["error_type"] == info["error_type"]
    events = suite.events("imp-died")
    assert [e.status for e in events] == ["PROCESSING", "FAILED"]  # it reached a worker
    assert events[-1].metadata["error_message"] == info["reason"]
    warnings = [r for r in records if "failed before it ran" in r["message"]]
    assert [r["level"]["name"] for r in warnings] == ["WARNING"]
    assert wait_until(lambda: redis_client.hlen(deliveries) == 0, time.monotonic() + 5)


def test_a_message_back_from_a_death_runs_alone_and_then_as_any_other(
    suite: Suite, redis_client: redis.Redis
) -> None:
    runs: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=suite.broker)
    def work(name: str) -> None:
        started = time.monotonic()
        time.sleep(0.2)
        with lock:
            runs.append((name, started, time.monotonic()))

    with suite.paused():
        for n in range(6):
            work.send(f"good-{n}")
        killed(suite, redis_client, suite.broker.enqueue(work.message("suspect")), 1)
        for n in range(6, 9):
            work.send(f"good-{n}")
    suite.run()  # on 4 threads

    assert sorted(name for name, _, _ in runs) == sorted(
        ["suspect", *(f"good-{n}" for n in range(9))]
    )
    (alone,) = [(start, end) for name, start, end in runs if name == "suspect"]
    beside = [(s, e) for name, s, e in runs if name != "suspect" and s < alone[1] and e > alone[0]]
    assert beside == [], "the suspect ran beside other messages"
    assert max(len([1 for _, s, e in runs if s <= t < e]) for _, t, _ in runs) > 1  # others did
    assert wait_until(lambda: redis_client.hlen(suite.keys.deliveries) == 0, time.monotonic() + 5)


def test_a_lone_run_that_ended_is_not_a_death_though_its_ack_died_with_the_process(
    suite: Suite, redis_client: redis.Redis
) -> None:
    # Dramatiq acks on the consumer thread, up to a worker_timeout after the run: a
    # killer that runs alone next can take the ack with it (seen in CI on RabbitMQ,
    # where a bystander was dead-lettered after two such lone runs).
    ran: list[str] = []

    @dramatiq.actor(broker=suite.broker)
    def bystander() -> None:
        ran.append("ran")

    with suite.paused():
        queued = suite.broker.enqueue(bystander.message())
        killed(suite, redis_client, queued, 1)
        for _ in range(4):  # more than max_deaths processes: each ran it alone, then died
            dead = DeathLimit(redis_client, max_deaths=3, namespace=suite.keys.namespace)
            dead._mark([queued.encode()])
            proxy = MessageProxy(queued)
            dead.before_process_message(suite.broker, proxy)
            dead.after_process_message(suite.broker, proxy)  # its run ended; no ack
    suite.run()  # raises if it was refused

    assert ran == ["ran"]
    assert suite.dead_letters == []


def test_the_fetched_id_is_read_from_the_options_whatever_the_message_carries() -> None:
    carried = dramatiq.Message(
        queue_name="default",
        actor_name="gave_up",
        args=({"options": {"redis_message_id": "inner"}}, {"text": '"redis_message_id":"x"'}),
        kwargs={},
        options={"redis_message_id": "outer", "pipe_target": {"redis_message_id": "next"}},
    )
    assert _redis_message_id(carried.encode()) == "outer"  # decoded: the key is there twice
    plain = carried.copy(args=(), options={"redis_message_id": "9b1c-4f"})
    assert _redis_message_id(plain.encode()) == "9b1c-4f"  # read from the text
    assert _redis_message_id(PickleEncoder().encode(plain.asdict())) is None  # not JSON
    assert _redis_message_id(b"{not json") is None


def test_a_retry_starts_clean_though_it_comes_before_the_clear_of_its_failure(
    suite: Suite, redis_client: redis.Redis, records: list[dict[str, Any]]
) -> None:
    attempts: list[int] = []

    @dramatiq.actor(broker=suite.broker, max_attempts=3, base_delay=1, max_delay=1)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    flaky.send()
    suite.run()
    assert len(attempts) == 3
    assert not [r for r in records if "runs alone" in r["message"]]
    assert wait_until(lambda: redis_client.hlen(suite.keys.deliveries) == 0, time.monotonic() + 5)


def test_an_actor_can_let_it_come_back_for_ever_or_allow_more_deaths(
    suite: Suite, redis_client: redis.Redis
) -> None:
    ran: list[str] = []

    @dramatiq.actor(broker=suite.broker, max_deaths=None)
    def uncounted() -> None:
        ran.append("uncounted")

    @dramatiq.actor(broker=suite.broker, max_deaths=5)
    def patient(name: str) -> None:
        ran.append(name)

    with suite.paused():
        killed(suite, redis_client, suite.broker.enqueue(uncounted.message()), 3)
        killed(suite, redis_client, suite.broker.enqueue(patient.message("four")), 4)
        killed(suite, redis_client, suite.broker.enqueue(patient.message("five")), 5)
        override = patient.message_with_options(args=("once",), max_deaths=1)
        killed(suite, redis_client, suite.broker.enqueue(override), 1)
    with pytest.raises(ActorFailedError, match="actor 'patient' failed: WorkerDiedError"):
        suite.run()
    assert sorted(ran) == ["four", "uncounted"]
    assert sorted(f.actor for f in suite.failures) == ["patient", "patient"]
    assert sorted(letter.reason.split(",")[0] for letter in suite.dead_letters) == [
        "worker died while processing it: 1 deliveries without an outcome",
        "worker died while processing it: 5 deliveries without an outcome",
    ]


@pytest.mark.parametrize("value", [0, -1, "3", 2.5, True])
def test_a_bad_max_deaths_is_refused_where_it_is_given(
    value: Any, stub_broker: StubBroker, redis_client: redis.Redis
) -> None:
    with pytest.raises(ConfigError, match="max_deaths"):
        DeathLimit(redis_client, max_deaths=value)
    with pytest.raises(ConfigError, match="max_deaths"):
        setup_broker(StubBroker(), max_deaths=value)
    stub_broker.add_middleware(DeathLimit(redis_client))
    with pytest.raises(ConfigError, match="actor 'bad': max_deaths"):
        dramatiq.actor(lambda: None, broker=stub_broker, actor_name="bad", max_deaths=value)


def test_a_message_past_its_age_limit_is_a_final_failure_not_a_success(suite: Suite) -> None:
    # Dramatiq's AgeLimit fails a message before it runs, as DeathLimit does: the suite
    # reports both the same way (it used to say COMPLETED, and keep no dead letter).
    ran: list[int] = []

    @dramatiq.actor(broker=suite.broker, max_age=1)
    def stale(import_id: str) -> None:
        ran.append(1)

    suite.stack.completion.expect("imp-old", 1)
    message = stale.message("imp-old")
    time.sleep(0.01)
    suite.broker.enqueue(message)
    with pytest.raises(ActorFailedError, match="actor 'stale' failed"):
        suite.run()
    assert ran == []
    (letter,) = suite.dead_letters
    assert letter.message_id == message.message_id
    assert "age limit" in letter.reason
    assert [e.status for e in suite.events("imp-old")] == ["FAILED"]


def test_a_count_whose_message_never_comes_back_is_dropped_after_ttl(
    stub_broker: StubBroker, redis_client: redis.Redis
) -> None:
    gone = dramatiq.Message(
        queue_name="default", actor_name="gone", args=(), kwargs={}, options={}
    ).copy(options={"redis_message_id": "fetched-by-the-dead"})
    died_with(stub_broker, redis_client, gone, 1)
    stub_broker.add_middleware(DeathLimit(redis_client, ttl=1_000))
    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()  # its flusher sweeps every ttl
    deliveries = Keys().deliveries
    try:
        assert redis_client.hlen(deliveries) == 1
        assert wait_until(lambda: redis_client.hlen(deliveries) == 0, time.monotonic() + 5)
    finally:
        worker.stop()
