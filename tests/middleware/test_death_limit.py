"""DeathLimit: runs that killed their worker are counted, a message at max_deaths is
failed before it runs, and a message back from a death runs alone in its process.

A worker process that dies leaves exactly what a ``DeathLimit`` of its own leaves when
its ``before_process_message`` ran and nothing after it: a count in Redis. The tests
make such deaths with a ``DeathLimit`` standing for each dead process (its isolation
dies with it); the multi-process tests with real SIGKILLs are in
tests/faults/test_crash_loop.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import ConfigError, DeathLimit, WorkerDiedError, get_stack, setup_broker
from dramatiq_shared.keys import Keys
from dramatiq_shared.stores import DeadLetterStore

from ..conftest import wait_until

DELIVERIES = Keys().deliveries


@pytest.fixture
def run_worker(suite: RedisBroker) -> Iterator[Callable[..., None]]:
    """Run a worker with real threads on the suite's broker until its queue is idle."""
    workers: list[dramatiq.Worker] = []

    def run(*, threads: int = 4) -> None:
        worker = dramatiq.Worker(suite, worker_timeout=50, worker_threads=threads)
        worker.start()
        workers.append(worker)
        suite.join("default", timeout=20_000)
        worker.join()

    yield run
    for worker in workers:
        worker.stop()


def died_running(client: redis.Redis, broker: dramatiq.Broker, message: Any, times: int) -> None:
    """``times`` worker processes started ``message`` and died before its outcome."""
    for _ in range(times):
        try:
            DeathLimit(client).before_process_message(broker, MessageProxy(message))
        except WorkerDiedError:
            raise AssertionError("refused before the deaths were all counted") from None


def test_a_message_at_max_deaths_is_failed_before_it_runs_and_reported_as_any_final_failure(
    suite: RedisBroker,
    redis_client: redis.Redis,
    run_worker: Callable[..., None],
    records: list[dict[str, Any]],
) -> None:
    ran: list[int] = []
    exhausted: list[dict[str, Any]] = []

    @dramatiq.actor(broker=suite)
    def gave_up(message: dict[str, Any], info: dict[str, Any]) -> None:
        exhausted.append(info)

    @dramatiq.actor(broker=suite, on_retry_exhausted="gave_up")
    def fragile(n: int, import_id: str) -> None:
        ran.append(n)

    stack = get_stack(suite)
    stack.completion.expect("imp-died", 1)
    poison = fragile.message(1, "imp-died")
    died_running(redis_client, suite, poison, 3)
    assert redis_client.hlen(DELIVERIES) == 1
    suite.enqueue(poison)
    run_worker()
    wait_until(lambda: exhausted, time.monotonic() + 10)

    assert ran == []  # not a fourth time
    (info,) = exhausted
    assert info["error_type"] == "dramatiq_shared.errors.WorkerDiedError"
    assert info["reason"].startswith(
        "worker died while processing it: 3 deliveries without an outcome, the last on "
    )
    letters = DeadLetterStore(stack.database).list()
    (letter,) = letters
    assert letter.message_id == poison.message_id
    assert letter.reason == info["reason"]
    assert letter.error_history[-1]["error_type"] == info["error_type"]
    stack.broadcaster.flush()
    events = stack.broadcaster.transport.read("imp-died")
    assert [e["status"] for e in events] == ["PROCESSING", "FAILED"]  # it reached a worker
    assert events[-1]["metadata"]["error_message"] == info["reason"]
    warnings = [r for r in records if "failed before it ran" in r["message"]]
    assert [r["level"]["name"] for r in warnings] == ["WARNING"]
    assert wait_until(lambda: redis_client.hlen(DELIVERIES) == 0, time.monotonic() + 5)


def test_a_message_back_from_a_death_runs_alone_and_then_as_any_other(
    suite: RedisBroker, redis_client: redis.Redis, run_worker: Callable[..., None]
) -> None:
    runs: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=suite)
    def work(name: str) -> None:
        started = time.monotonic()
        time.sleep(0.2)
        with lock:
            runs.append((name, started, time.monotonic()))

    suspect = work.message("suspect")
    died_running(redis_client, suite, suspect, 1)
    for n in range(6):
        work.send(f"good-{n}")
    suite.enqueue(suspect)
    for n in range(6, 9):
        work.send(f"good-{n}")
    run_worker(threads=4)

    assert sorted(name for name, _, _ in runs) == sorted(
        ["suspect", *(f"good-{n}" for n in range(9))]
    )
    (alone,) = [(start, end) for name, start, end in runs if name == "suspect"]
    beside = [(s, e) for name, s, e in runs if name != "suspect" and s < alone[1] and e > alone[0]]
    assert beside == [], "the suspect ran beside other messages"
    assert max(len([1 for _, s, e in runs if s <= t < e]) for _, t, _ in runs) > 1  # others did
    assert wait_until(lambda: redis_client.hlen(DELIVERIES) == 0, time.monotonic() + 5)


def test_a_retry_starts_clean_though_it_comes_before_the_clear_of_its_failure(
    suite: RedisBroker,
    redis_client: redis.Redis,
    run_worker: Callable[..., None],
    records: list[dict[str, Any]],
) -> None:
    attempts: list[int] = []

    @dramatiq.actor(broker=suite, max_attempts=3, base_delay=1, max_delay=1)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    flaky.send()
    run_worker()
    assert len(attempts) == 3
    assert not [r for r in records if "runs alone" in r["message"]]
    assert wait_until(lambda: redis_client.hlen(DELIVERIES) == 0, time.monotonic() + 5)


def test_an_actor_can_count_nothing_or_allow_more(
    stub_broker: StubBroker, redis_client: redis.Redis
) -> None:
    limit = DeathLimit(redis_client)
    stub_broker.add_middleware(limit)

    @dramatiq.actor(broker=stub_broker, max_deaths=None)
    def uncounted() -> None: ...

    @dramatiq.actor(broker=stub_broker, max_deaths=5)
    def patient() -> None: ...

    died_running(redis_client, stub_broker, uncounted.message(), 3)
    assert redis_client.hlen(DELIVERIES) == 0  # not a command spent on it
    message = patient.message()
    died_running(redis_client, stub_broker, message, 5)
    with pytest.raises(WorkerDiedError, match="5 deliveries"):
        limit.before_process_message(stub_broker, MessageProxy(message))
    override = patient.message_with_options(max_deaths=1)
    died_running(redis_client, stub_broker, override, 1)
    with pytest.raises(WorkerDiedError, match="1 deliveries"):
        limit.before_process_message(stub_broker, MessageProxy(override))


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


def test_a_message_past_its_age_limit_is_a_final_failure_not_a_success(
    suite: RedisBroker, run_worker: Callable[..., None]
) -> None:
    # Dramatiq's AgeLimit fails a message before it runs, as DeathLimit does: the suite
    # reports both the same way (it used to say COMPLETED, and keep no dead letter).
    ran: list[int] = []

    @dramatiq.actor(broker=suite, max_age=1)
    def stale(import_id: str) -> None:
        ran.append(1)

    stack = get_stack(suite)
    stack.completion.expect("imp-old", 1)
    message = stale.message("imp-old")
    time.sleep(0.01)
    suite.enqueue(message)
    run_worker()
    assert ran == []
    (letter,) = DeadLetterStore(stack.database).list()
    assert letter.message_id == message.message_id
    assert "age limit" in letter.reason
    stack.broadcaster.flush()
    statuses = [e["status"] for e in stack.broadcaster.transport.read("imp-old")]
    assert statuses == ["FAILED"]


def test_a_count_whose_message_never_comes_back_is_dropped_after_ttl(
    stub_broker: StubBroker, redis_client: redis.Redis
) -> None:
    @dramatiq.actor(broker=stub_broker)
    def gone() -> None: ...

    died_running(redis_client, stub_broker, gone.message(), 1)
    stub_broker.add_middleware(DeathLimit(redis_client, ttl=1_000))
    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()  # its flusher sweeps every ttl
    try:
        assert redis_client.hlen(DELIVERIES) == 1
        assert wait_until(lambda: redis_client.hlen(DELIVERIES) == 0, time.monotonic() + 5)
    finally:
        worker.stop()
