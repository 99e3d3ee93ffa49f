"""Retry, breaker deferral and status lifecycle on RabbitMQ: users who outgrow Redis keep them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dramatiq_shared import Broadcaster, MemoryTransport, RetryConfig, StatusConfig
from dramatiq_shared.middleware import CircuitBreaker, StatusBroadcast
from dramatiq_shared.middleware.heartbeat import queue_depths

from .conftest import Calls, install


@pytest.fixture
def rabbitmq_broker(rabbitmq_url: str) -> Iterator[Any]:
    broker = RabbitmqBroker(url=rabbitmq_url)
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def queue() -> str:
    return f"ds_test_{uuid.uuid4().hex[:8]}"  # a queue of the test's own


def run(broker: Any, queue: str, until: Callable[[], bool]) -> None:
    """Run a worker until ``until()`` holds and the queue is idle.

    RabbitMQ's counts leave out messages a worker holds unacknowledged, as deferred
    ones are while they wait in its memory, so an empty queue alone proves nothing.
    """
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=4)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)
        broker.join(queue, min_successes=3, idle_time=100, timeout=30_000)
        worker.join()
    finally:
        worker.stop()


def test_retries_then_the_dead_letter_queue(rabbitmq_broker: Any, queue: str) -> None:
    install(rabbitmq_broker, config=RetryConfig(base_delay=10, max_delay=50))
    calls = Calls()

    @dramatiq.actor(broker=rabbitmq_broker, queue_name=queue, max_attempts=3)
    def always_fails() -> None:
        calls()
        raise RuntimeError("broken")

    always_fails.send()
    run(rabbitmq_broker, queue, until=lambda: len(calls) == 3)
    assert len(calls) == 3
    assert queue_depths(rabbitmq_broker, [queue]) == {queue: {"ready": 0, "delayed": 0, "dead": 1}}


def test_an_open_breaker_defers_without_using_attempts(rabbitmq_broker: Any, queue: str) -> None:
    breakers = CircuitBreaker(
        local=True, breakers={"api": {"failureThreshold": 1, "resetTimeout": 300}}, jitter=20
    )
    rabbitmq_broker.add_middleware(breakers)
    install(rabbitmq_broker)
    ran = []

    @dramatiq.actor(broker=rabbitmq_broker, queue_name=queue, breaker="api", max_attempts=1)
    def call_api(n: int) -> None:
        ran.append(n)

    with pytest.raises(ConnectionError), breakers.breakers["api"]:
        raise ConnectionError("trip it")
    for n in range(5):
        call_api.send(n)
    run(rabbitmq_broker, queue, until=lambda: len(ran) == 5)
    assert sorted(ran) == list(range(5))  # each waited for the breaker, none failed
    assert rabbitmq_broker.get_queue_message_counts(queue)[2] == 0


def test_status_lifecycle(rabbitmq_broker: Any, queue: str) -> None:
    transport = MemoryTransport()
    broadcaster = Broadcaster(transport, config=StatusConfig(broadcast_interval=0))
    rabbitmq_broker.add_middleware(StatusBroadcast(broadcaster=broadcaster))
    install(rabbitmq_broker, config=RetryConfig(max_attempts=2, base_delay=10, max_delay=20))
    first = threading.Event()

    @dramatiq.actor(broker=rabbitmq_broker, queue_name=queue)
    def flaky(import_id: str) -> None:
        if not first.is_set():
            first.set()
            raise ConnectionError("blip")

    flaky.send(import_id="imp-r")
    run(rabbitmq_broker, queue, until=lambda: len(transport.read("imp-r")) == 4)
    broadcaster.close()
    assert [e["status"] for e in transport.read("imp-r")] == [
        "PROCESSING",
        "RETRYING",
        "PROCESSING",
        "COMPLETED",
    ]
