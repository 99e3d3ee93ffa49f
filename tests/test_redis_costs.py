"""Redis commands per message: what the suite adds to Dramatiq's own, counted, not timed.

The broker runs on one redis-server and the suite's state (breakers, status streams,
heartbeats) on another, both the test's own, so every command on the second is one
the suite added; Dramatiq's own polling, which varies with timing, is on the first.
Counts are of the steady state: a first round of messages warms up what is done once
(scripts loaded, the breaker's view learnt, connections opened) and is not counted.
A long ``linger`` makes the status batches as large as the run allows whatever the
machine's speed, so the count shows the batches' structure (a command an event, one
an import and a few a batch), not how busy the machine was.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_shared import NoteStatus, RedisTransport, StatusEvent, get_stack, setup_broker

from .conftest import RedisServer, redis_commands

MESSAGES = 400
WARM_UP = 50


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """The broker's redis-server and the suite's."""
    (tmp_path / "broker").mkdir()
    (tmp_path / "suite").mkdir()
    broker = RedisServer(tmp_path / "broker", "--appendonly", "no").started()
    suite = RedisServer(tmp_path / "suite", "--appendonly", "no").started()
    yield broker, suite
    broker.stop()
    suite.stop()


def added(
    servers: tuple[RedisServer, RedisServer],
    tmp_path: Path,
    *,
    import_ids: bool,
    max_deaths: int | None = None,
    breaker: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
) -> float:
    """Commands the suite sent to its Redis per message, over MESSAGES no-op messages;
    DeathLimit's notes, a command a message, only with ``max_deaths``; ``breaker`` sets
    the actor's breaker; ``retry`` the retry config (a mapping), Dramatiq's defaults
    when None."""
    broker_server, suite_server = servers
    broker = RedisBroker(url=broker_server.url)
    setup_broker(
        broker,
        database=f"sqlite:///{tmp_path / 'costs.db'}",
        redis_url=suite_server.url,
        status={"linger": 2_000},
        max_deaths=max_deaths,
        breakers={"svc": breaker or {}},
        retry=retry,
    )
    done = threading.Semaphore(0)

    @dramatiq.actor(broker=broker, actor_name="noop", breaker="svc")
    def noop(n: int, import_id: str | None = None) -> None:
        done.release()

    def process(first: int, count: int) -> None:
        for n in range(first, first + count):
            noop.send(n, import_id=f"imp-{n % 2}" if import_ids else None)
        for _ in range(count):
            assert done.acquire(timeout=60), "a message was not processed"
        get_stack(broker).broadcaster.flush()

    client = redis.Redis(port=suite_server.port)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=50)
    worker.start()
    try:
        process(0, WARM_UP)
        first = WARM_UP
        # Until the breaker's view is learnt and its subscription up (later on a loaded
        # machine), calls ask Redis: warm up until a round of messages asks it nothing.
        for _ in range(0 if import_ids else 20):
            before = redis_commands(client)
            process(first, WARM_UP)
            first += WARM_UP
            if redis_commands(client) - before - 1 <= 2:  # a heartbeat may fall in the round
                break
        before = redis_commands(client)
        process(first, MESSAGES)
        spent = redis_commands(client) - before - 1  # less the first INFO
    finally:
        worker.stop()
        get_stack(broker).broadcaster.close()
        get_stack(broker).breakers.breakers.close()
        broker.close()
    print(f"Redis commands the suite added a message: {spent / MESSAGES:.3f}")
    return spent / MESSAGES


def test_a_closed_breaker_and_the_rest_of_the_suite_add_no_command_a_message(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    assert added(servers, tmp_path, import_ids=False) <= 0.05


def test_a_closed_breaker_counting_rates_adds_no_command_a_message(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    # Its successes go to the window in batches of 200, or once a second.
    rates = {"failureRateThreshold": 50, "slowCallDurationThreshold": 1_000, "minimumCalls": 20}
    assert added(servers, tmp_path, import_ids=False, breaker=rates) <= 0.05


def test_a_retry_budget_adds_at_most_a_twentieth_of_a_command_a_healthy_message(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    # Each success is counted in the process and sent with a hundred others (or once a
    # second): an EVALSHA and its HINCRBY, plus a PEXPIRE and an HDEL once a bucket.
    budget = {"budget": {"ratio": 0.1, "minimum": 10, "window": 10_000}}
    assert added(servers, tmp_path, import_ids=False, retry=budget) <= 0.05


def test_lifecycle_events_with_import_ids_add_at_most_two_commands_a_message(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    assert added(servers, tmp_path, import_ids=True) <= 2


def test_noting_fetched_messages_for_worker_deaths_adds_one_command_a_message(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    # An HSETNX a fetched message, pipelined a batch; the clears are one HDEL a batch.
    assert 1 <= added(servers, tmp_path, import_ids=False, max_deaths=3) <= 1.05


def test_a_status_batch_costs_a_command_an_event_and_a_few_more_whatever_its_imports(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, _, _ = private_redis
    transport = RedisTransport(client)
    transport.append([StatusEvent("warm-up", NoteStatus.COMPLETED)], 0)  # loads the script
    events = [StatusEvent(f"imp-{n % 20}", NoteStatus.COMPLETED) for n in range(200)]

    def spent(token: str) -> int:
        before = redis_commands(client)
        transport.append(events, 1_000, batch=token, persist=True)
        transport.persisted([token])
        return redis_commands(client) - before - 1  # less the first INFO

    # 200 XADDs; for the batch EVALSHA, GET, four TYPEs, HMGET and HSET of the last
    # ids, the all-stream's XADD, the imports' ZADD, two SETs and a ZADD, then ZREM,
    # DEL and PEXPIRE to settle. Imports the last ids do not hold yet: one XINFO each.
    assert spent("b1") == 200 + 16 + 20
    assert spent("b2") == 200 + 16
