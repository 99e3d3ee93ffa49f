"""StatusBroadcast: the lifecycle events of messages, on RedisBroker with real worker threads."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dramatiq_shared import (
    Broadcaster,
    CircuitBreakerConfig,
    ConfigError,
    MemoryTransport,
    RedisTransport,
    RetryConfig,
    StatusConfig,
)
from dramatiq_shared.middleware import CircuitBreaker, StatusBroadcast

from .conftest import install


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
def broadcaster(transport: MemoryTransport) -> Broadcaster:
    return Broadcaster(transport, config=StatusConfig(broadcast_interval=0))


def lifecycle(transport: MemoryTransport, import_id: str) -> list[tuple[str, Any]]:
    return [(e["status"], (e["metadata"] or {}).get("attempt")) for e in transport.read(import_id)]


def test_success_retry_and_failure_produce_their_sequences(
    redis_broker: RedisBroker,
    broadcaster: Broadcaster,
    transport: MemoryTransport,
) -> None:
    redis_broker.add_middleware(StatusBroadcast(broadcaster=broadcaster))
    install(redis_broker, config=RetryConfig(max_attempts=3, base_delay=10, max_delay=20))
    flaky_runs = []

    @dramatiq.actor(broker=redis_broker)
    def succeeds(import_id: str) -> None:
        pass

    @dramatiq.actor(broker=redis_broker, status_context="flaky step")
    def flaky(import_id: str, note_id: str) -> None:
        flaky_runs.append(1)
        if len(flaky_runs) == 1:
            raise ConnectionError("blip")

    @dramatiq.actor(broker=redis_broker, max_attempts=2)
    def fails(import_id: str) -> None:
        raise ValueError("bad data")

    @dramatiq.actor(broker=redis_broker)
    def untracked(n: int) -> None:
        pass

    @dramatiq.actor(broker=redis_broker, status=False)
    def opted_out(import_id: str) -> None:
        pass

    succeeds.send("imp-ok")
    flaky.send(import_id="imp-flaky", note_id="n-1")
    fails.send(import_id="imp-fail")
    untracked.send(1)
    opted_out.send("imp-quiet")
    worker = dramatiq.Worker(redis_broker, worker_timeout=20, worker_threads=4)
    worker.start()
    try:
        redis_broker.join("default", timeout=10_000)
        worker.join()
    finally:
        worker.stop()  # flushes the broadcaster
    assert lifecycle(transport, "imp-ok") == [("PROCESSING", None), ("COMPLETED", None)]
    assert lifecycle(transport, "imp-flaky") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
    assert lifecycle(transport, "imp-fail") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("FAILED", 2),
    ]
    retrying = transport.read("imp-flaky")[1]
    assert retrying["metadata"]["max_attempts"] == 3
    assert retrying["metadata"]["error_type"] == "ConnectionError"
    assert retrying["metadata"]["delay"] >= 10
    assert (retrying["context"], retrying["noteId"], retrying["indentLevel"]) == (
        "flaky step",
        "n-1",
        1,
    )
    failed = transport.read("imp-fail")[-1]
    assert failed["metadata"]["error_type"] == "ValueError"
    assert failed["metadata"]["error_message"] == "bad data"
    assert transport.read("imp-quiet") == []
    assert set(transport.imports()) == {"imp-ok", "imp-flaky", "imp-fail"}


def test_a_message_held_back_by_an_open_breaker_is_retrying_with_the_reason(
    stub_broker: StubBroker,
    redis_client: Any,
    redis_url: str,
    broadcaster: Broadcaster,
    transport: MemoryTransport,
) -> None:
    breakers = CircuitBreaker(
        redis_url=redis_url, breakers={"api": CircuitBreakerConfig(failure_threshold=1)}
    )
    stub_broker.add_middleware(breakers)
    stub_broker.add_middleware(StatusBroadcast(broadcaster=broadcaster))
    install(stub_broker)

    @dramatiq.actor(broker=stub_broker, breaker="api")
    def call_api(import_id: str) -> None:
        pass

    with pytest.raises(ConnectionError), breakers.breakers["api"]:
        raise ConnectionError("trip")
    message = call_api.send("imp-held")
    proxy = dramatiq.broker.MessageProxy(message)
    with pytest.raises(dramatiq.middleware.SkipMessage):
        stub_broker.emit_before("process_message", proxy)
    stub_broker.emit_after("skip_message", proxy)
    broadcaster.close()
    (event,) = transport.read("imp-held")
    assert event["status"] == "RETRYING"
    assert "circuit breaker 'api' is open" in event["metadata"]["reason"]


def test_a_broadcast_failure_never_fails_the_message(
    stub_broker: StubBroker, private_redis: Any
) -> None:
    client, stop, _ = private_redis
    broadcaster = Broadcaster(
        RedisTransport(client), config=StatusConfig(max_retries=1, timeout=500)
    )
    stub_broker.add_middleware(StatusBroadcast(broadcaster=broadcaster))
    install(stub_broker)
    done = threading.Event()

    @dramatiq.actor(broker=stub_broker)
    def work(import_id: str) -> None:
        done.set()

    stop()  # Redis goes away
    work.send("imp-1")
    worker = dramatiq.Worker(stub_broker, worker_timeout=20)
    worker.start()
    stub_broker.join("default")  # fail_fast: a dead-lettered message would raise here
    worker.join()
    worker.stop()
    broadcaster.close()
    assert done.is_set()
    assert broadcaster.counts["failed"] == 2  # PROCESSING and COMPLETED, logged and counted
    assert not stub_broker.dead_letters


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"status": "yes"}, "actor 'bad': status must be True or False"),
        ({"status_context": ""}, "actor 'bad': status_context must be a non-blank string"),
    ],
)
def test_bad_status_options_are_refused_at_declaration(
    stub_broker: StubBroker, broadcaster: Broadcaster, options: dict[str, Any], message: str
) -> None:
    stub_broker.add_middleware(StatusBroadcast(broadcaster=broadcaster))
    with pytest.raises(ConfigError, match=message):
        dramatiq.actor(broker=stub_broker, actor_name="bad", **options)(lambda: None)
