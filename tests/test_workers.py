"""create_worker, get_worker_status and close_workers on RedisBroker with real threads."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import ConfigError, close_workers, create_worker, get_worker_status
from dramatiq_shared.workers import MessageCounts

from .middleware.conftest import install


def test_status_counts_and_a_graceful_close_lose_nothing(redis_broker: RedisBroker) -> None:
    install(redis_broker)
    release = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=redis_broker, max_attempts=1)
    def work(n: int) -> None:
        if n == 0:
            raise ValueError("the first fails")
        release.wait(10)
        with lock:
            done.append(n)

    for n in range(40):
        work.send(n)
    worker = create_worker(redis_broker, worker_threads=4, worker_timeout=50)
    deadline = time.monotonic() + 10
    while get_worker_status(worker).in_flight < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    status = get_worker_status(worker)
    assert (status.running, status.threads, status.queues) == (True, 4, ("default",))
    assert status.in_flight == 4
    assert status.started_at is not None
    release.set()
    close_workers([worker], timeout=10_000)  # the 4 in flight finish; the rest stay queued
    finished = get_worker_status(worker)
    assert finished.running is False
    assert finished.in_flight == 0
    assert finished.failed == 1
    assert finished.processed == len(done) + 1
    left = redis_broker.client.hlen("dramatiq:default.msgs")
    assert len(done) + 1 + left == 40  # nothing lost: processed, or back in the queue

    again = create_worker(redis_broker, worker_threads=4, worker_timeout=50)
    redis_broker.join("default", timeout=10_000)
    close_workers([again])
    assert sorted(done) == list(range(1, 40))


def test_unknown_queues_and_bad_numbers_are_refused(redis_broker: RedisBroker) -> None:
    @dramatiq.actor(broker=redis_broker)
    def anything() -> None:
        pass

    with pytest.raises(
        ConfigError, match="queues must be a declared queue \\(default\\), got 'nope'"
    ):
        create_worker(redis_broker, queues=["nope"])
    with pytest.raises(ConfigError, match="worker_threads must be an int >= 1, got 0"):
        create_worker(redis_broker, worker_threads=0)


def test_a_message_skipped_before_message_counts_saw_it_is_not_counted(
    redis_broker: RedisBroker,
) -> None:
    # setup_broker() puts MessageCounts where Retries was, after AgeLimit: a message
    # AgeLimit skips never started as far as MessageCounts knows.
    counts = MessageCounts()
    redis_broker.add_middleware(counts)
    done = threading.Event()

    @dramatiq.actor(broker=redis_broker, max_age=1)
    def stale() -> None:
        pass

    @dramatiq.actor(broker=redis_broker)
    def fresh() -> None:
        done.set()

    stale.send_with_options(delay=50)  # older than max_age once it is due
    fresh.send()
    worker = create_worker(redis_broker, worker_timeout=50)
    try:
        assert done.wait(10)
        redis_broker.join(stale.queue_name, timeout=10_000)
        worker.join()
    finally:
        close_workers([worker])
    assert (counts.in_flight, counts.processed) == (0, 1)
