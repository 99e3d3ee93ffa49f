"""Brokers with the retry and error-handling middleware in place of Dramatiq's Retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries

from dramatiq_shared import RetryConfig
from dramatiq_shared.middleware import ErrorHandling, Retry
from dramatiq_shared.testing import Suite

Install = Callable[..., Retry]


def install(
    broker: dramatiq.Broker,
    *,
    config: RetryConfig | None = None,
    database: Any = None,
    **options: Any,
) -> Retry:
    """Swap Dramatiq's Retries for Retry and add ErrorHandling after it."""
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, Retries)]
    retry = Retry(config=config or RetryConfig(base_delay=10, max_delay=100), seed=1, **options)
    broker.add_middleware(retry)
    broker.add_middleware(ErrorHandling(database=database))
    return retry


def drain(broker: StubBroker) -> None:
    """Run a worker on the StubBroker until its default queue is empty, then stop it."""
    worker = dramatiq.Worker(broker, worker_timeout=20)
    worker.start()
    try:
        broker.join("default", fail_fast=False)
        worker.join()
    finally:
        worker.stop()


@pytest.fixture(params=["stub_broker", "redis_broker"], ids=["stub", "redis"])
def broker(request: pytest.FixtureRequest) -> dramatiq.Broker:
    """Each test runs on the StubBroker and on a real RedisBroker."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def run_worker(broker: dramatiq.Broker) -> Iterator[Callable[..., None]]:
    """Start a worker with real threads, wait until ``queue`` drains, keep it for the test."""
    workers: list[dramatiq.Worker] = []

    def run(queue: str = "default", *, threads: int = 4, timeout: int = 20_000) -> None:
        if not workers:
            worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
            worker.start()
            workers.append(worker)
        if isinstance(broker, StubBroker):
            broker.join(queue, timeout=timeout, fail_fast=False)
        else:
            broker.join(queue, timeout=timeout)
        workers[0].join()

    yield run
    for worker in workers:
        worker.stop()


def decisions(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The retry decisions taken, in order, from the middleware's log records."""
    return [r["extra"]["retry_decision"] for r in records if "retry_decision" in r["extra"]]


def dead_lettered(broker: dramatiq.Broker, queue: str = "default") -> list[dict[str, Any]]:
    """The messages the broker itself dead-lettered (Dramatiq's dead-letter queue)."""
    if isinstance(broker, StubBroker):
        return [m.asdict() for m in broker.dead_letters_by_queue[queue]]
    assert isinstance(broker, RedisBroker)
    raw = broker.client.hvals(f"{broker.namespace}:{queue}.XQ.msgs")
    return [dramatiq.Message.decode(body).asdict() for body in raw]


class Calls:
    """Records when an actor ran, thread-safely."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.options: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self) -> None:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        with self._lock:
            self.times.append(time.monotonic())
            self.options.append(dict(message.options) if message else {})

    def __len__(self) -> int:
        return len(self.times)


@pytest.fixture
def calls(broker: dramatiq.Broker) -> Calls:
    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    return Calls()


class EnqueueFailsBroker(RedisBroker):
    """A RedisBroker whose enqueues fail while ``broken`` is set, as during a Redis blip."""

    broken = False

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        if self.broken:
            raise redis.ConnectionError("Connection refused (injected)")
        return super().enqueue(message, delay=delay)


@pytest.fixture
def suite_middleware() -> list[Middleware]:
    """More middleware for ``suite`` (``AsyncIO``, ``Results``): a module overrides it."""
    return []


@pytest.fixture
def suite(
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suite_middleware: list[Middleware],
) -> Iterator[Suite]:
    """The testing kit's :class:`Suite` on a RedisBroker of the test's own: the whole suite
    on the test's Redis, quick retries, every status event streamed (no coalescing),
    breaker ``svc``, Dramatiq's ``CurrentMessage`` and ``suite_middleware``, a worker
    of 4 threads."""
    # Not the settings and actors of a broker an earlier test left as Dramatiq's global.
    monkeypatch.setattr(dramatiq.broker, "global_broker", None)
    with Suite(
        database=f"sqlite:///{tmp_path / 'suite.db'}",
        redis_url=redis_url,
        options={
            "retry": {"maxAttempts": 3, "baseDelay": 10, "maxDelay": 50},
            "status": {"broadcastInterval": 0},
            "breakers": {"svc": {"failureThreshold": 2, "resetTimeout": 300}},
        },
        middleware=[dramatiq.middleware.CurrentMessage(), *suite_middleware],
        # The delays here are short already, and tests count the deferrals of a message
        # held back by an open breaker, which waits shortened below its reset timeout
        # would multiply.
        max_wait=1_000,
    ) as kit:
        yield kit


def events(suite: Suite, import_id: str, note_id: str | None = None) -> list[Any]:
    """``(status, attempt)`` of the message events streamed for ``import_id`` (and
    ``note_id``), in order, once the broadcaster has sent everything published so far."""
    return [
        (e.status, e.attempt)
        for e in suite.events(import_id, note_id=note_id)
        if e.context != "import"
    ]


def import_events(suite: Suite, import_id: str) -> list[tuple[str, Any, Any]]:
    """``(status, current_count, total_count)`` of an import's completion events."""
    return [
        (e.status, e.current_count, e.total_count)
        for e in suite.events(import_id)
        if e.context == "import"
    ]
