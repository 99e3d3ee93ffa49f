"""setup_broker: one stack, in order, in place of Dramatiq's Retries; from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from dramatiq_shared import (
    ConfigError,
    MemoryTransport,
    RedisTransport,
    RetryConfig,
    get_stack,
    setup_broker,
)
from dramatiq_shared.config import DRAMATIQ_DEFAULTS
from dramatiq_shared.middleware import (
    CircuitBreaker,
    DeathLimit,
    ErrorHandling,
    Heartbeat,
    Retry,
    StatusBroadcast,
)
from dramatiq_shared.workers import MessageCounts

ORDER = [CircuitBreaker, StatusBroadcast, Retry, ErrorHandling]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in ("REDIS_URL", "RABBITMQ_URL", "DATABASE_URL", "DRAMATIQ_SHARED_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'stack.db'}")
    yield monkeypatch
    get_stack().broadcaster.close()


def ours(broker: dramatiq.Broker) -> list[type]:
    return [type(m) for m in broker.middleware if type(m) in ORDER]


def test_twice_is_one_stack_in_order_without_retries(environment: Any) -> None:
    broker = StubBroker()
    position = next(n for n, m in enumerate(broker.middleware) if isinstance(m, Retries))
    assert setup_broker(broker) is broker
    assert setup_broker(broker) is broker
    assert not any(isinstance(m, Retries) for m in broker.middleware)
    assert ours(broker) == ORDER
    # Where Retries was, after MessageCounts; Dramatiq's own stay where they were
    # (its tests add middleware before AgeLimit and find it first in the list).
    assert type(broker.middleware[position]) is MessageCounts
    assert [type(m) for m in broker.middleware[position + 1 : position + 5]] == ORDER
    assert [type(m) for m in broker.middleware[:position]] == [
        type(m) for m in StubBroker().middleware[:position]
    ]
    assert dramatiq.get_broker() is broker
    # Every option of Dramatiq's Retries stays declarable (Retry honours each).
    assert Retries().actor_options <= broker.actor_options
    assert {"max_attempts", "breaker", "on_error", "status_context"} <= broker.actor_options


def test_actors_may_declare_every_option_of_dramatiqs_retries(environment: Any) -> None:
    broker = setup_broker(StubBroker())

    @dramatiq.actor(
        broker=broker,
        max_retries=None,
        min_backoff=0,
        max_backoff=10,
        retry_when=lambda retries, exception: retries < 2,
        throws=KeyError,
        on_retry_exhausted="elsewhere",
    )
    def dramatiq_style() -> None:
        pass

    assert dramatiq_style.options["min_backoff"] == 0


def test_without_a_retry_config_the_defaults_are_dramatiqs(environment: Any) -> None:
    for name in [n for n in os.environ if n.startswith("DRAMATIQ_SHARED_RETRY_")]:
        environment.delenv(name)
    retry = get_stack(setup_broker(StubBroker())).retry
    assert retry.config == DRAMATIQ_DEFAULTS
    assert (retry.config.max_attempts, retry.config.base_delay) == (21, 15_000)
    assert retry.config.max_delay == 7 * 24 * 3600 * 1000
    get_stack().broadcaster.close()
    given = RetryConfig(max_attempts=4)
    assert get_stack(setup_broker(StubBroker(), retry=given)).retry.config == given


def test_embedded_defaults_run_a_message_end_to_end(environment: Any) -> None:
    broker = setup_broker()
    assert isinstance(broker, StubBroker)
    stack = get_stack()
    assert isinstance(stack.broadcaster.transport, MemoryTransport)
    ran = []

    @dramatiq.actor(breaker="local-api", max_attempts=2)
    def work(import_id: str) -> None:
        ran.append(import_id)

    work.send("imp-1")
    worker = dramatiq.Worker(broker, worker_timeout=20)
    worker.start()
    broker.join("default")
    worker.join()
    worker.stop()
    assert ran == ["imp-1"]
    assert [e["status"] for e in stack.broadcaster.transport.read("imp-1")] == [  # type: ignore[attr-defined]
        "PROCESSING",
        "COMPLETED",
    ]


def test_redis_url_builds_a_redis_broker_with_shared_state(
    environment: Any, redis_client: redis.Redis, redis_url: str
) -> None:
    environment.setenv("REDIS_URL", redis_url)
    environment.setenv("DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS", "7")
    broker = setup_broker(breakers={"usda-api": {"failureThreshold": 2}})
    assert isinstance(broker, RedisBroker)
    stack = get_stack(broker)
    assert isinstance(stack.broadcaster.transport, RedisTransport)
    assert stack.retry.config.max_attempts == 7
    assert stack.breakers.breakers["usda-api"].fail_max == 2
    broker.close()


def test_a_namespace_keeps_the_suites_keys_apart(
    environment: Any, redis_client: redis.Redis, redis_url: str
) -> None:
    broker = setup_broker(
        RedisBroker(url=redis_url, namespace="app-b"),
        redis_url=redis_url,
        namespace="app_b",
        breakers={"usda-api": {"failureThreshold": 1}},
    )
    stack = get_stack(broker)
    stack.breakers.breakers["usda-api"].open()
    stack.completion.expect("imp-1", 1)
    suite_keys = {k.decode() for k in redis_client.keys("*") if not k.startswith(b"app-b:")}
    assert suite_keys
    assert all(k.startswith("app_b:") for k in suite_keys), suite_keys
    broker.close()


def test_actors_declared_before_setup_are_checked_too(environment: Any) -> None:
    broker = StubBroker()

    @dramatiq.actor(broker=broker, max_retries=-1)
    def early() -> None:
        pass

    with pytest.raises(ConfigError, match="actor 'early': max_retries must be an int >= 0"):
        setup_broker(broker)


def test_rabbitmq_url_builds_a_rabbitmq_broker(environment: Any) -> None:
    environment.setenv("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    broker = setup_broker()
    assert type(broker).__name__ == "RabbitmqBroker"
    assert ours(broker) == ORDER
    broker.close()


def test_bad_settings_are_refused(environment: Any) -> None:
    with pytest.raises(ConfigError, match="max_attempts must be an int >= 1, got 0"):
        setup_broker(StubBroker(), retry={"maxAttempts": 0})
    with pytest.raises(ConfigError, match="RetryConfig must be a RetryConfig or a mapping"):
        setup_broker(StubBroker(), retry=3)  # type: ignore[arg-type]


def test_a_bad_breaker_setting_names_the_breaker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'stack.db'}")
    usda = "breakers['usda-api']: failure_threshold must be an int >= 1, got 0"
    with pytest.raises(ConfigError, match=re.escape(usda)) as refused:
        setup_broker(StubBroker(), breakers={"usda-api": {"failureThreshold": 0}})
    assert refused.value.field == "breakers['usda-api'].failure_threshold"
    unknown = "breakers['nutrition']: CircuitBreakerConfig has no setting 'resetTimout'"
    with pytest.raises(ConfigError, match=re.escape(unknown)):
        setup_broker(StubBroker(), breakers={"nutrition": {"resetTimout": 30_000}})


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_a_malformed_redis_url_is_refused_naming_where_it_came_from(
    given: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RABBITMQ_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    if given == "environment":
        monkeypatch.setenv("REDIS_URL", "notaurl")
    arguments = {"redis_url": "notaurl"} if given == "argument" else {}
    setting = "redis_url" if given == "argument" else "REDIS_URL"
    with pytest.raises(ConfigError, match=f"^{setting} must be a redis://.*got 'notaurl'$"):
        setup_broker(**arguments)
    assert not (tmp_path / "never.db").exists()  # refused before anything was built


def test_with_redis_the_death_limit_and_heartbeat_follow_the_four(
    environment: Any, redis_url: str
) -> None:
    broker = setup_broker(RedisBroker(url=redis_url), redis_url=redis_url)
    kinds = [type(m) for m in broker.middleware if type(m) in (*ORDER, DeathLimit, Heartbeat)]
    assert kinds == [*ORDER, DeathLimit, Heartbeat]
