"""setup_broker(): the whole suite on a broker, in the order the message flow needs.

Middleware order in ``broker.middleware`` (Dramatiq calls ``before_*`` hooks in this
order and ``after_*`` hooks in reverse), put where Dramatiq's ``Retries`` was:

1. :class:`CircuitBreaker` — holds back a message whose breaker is open before anything
   reports it as started;
2. :class:`RetryBudget` — only when the retry config has a ``budget``: spends it
   before a retry runs, so a retry the budget refuses is deferred (or failed) before
   anything reports it as started, and a message the breaker above holds back spends
   nothing; after the actor, counts a success (its ``after_process_message`` runs
   after Retry's and StatusBroadcast's, which it does not need);
3. :class:`StatusBroadcast` — PROCESSING before the actor; after it, reads the decision
   of the retry layer below to say COMPLETED, RETRYING or FAILED;
4. :class:`Retry` — decides and re-enqueues; asks the breaker for its verdict;
5. :class:`ErrorHandling` — binds the log context first, runs ``on_error`` hooks first
   after a failure, and logs and dead-letters once the broker acks or nacks;
6. :class:`DeathLimit` — with Redis: knows a message that comes back from a worker
   that died with it, so a message that keeps killing its worker process is failed
   (and reported by the four above) instead of run for ever;
7. :class:`Heartbeat` — with Redis: the worker process's status every few seconds.

What it builds, when not given:

* the broker: a ``RabbitmqBroker`` from ``RABBITMQ_URL``, else a ``RedisBroker`` from
  ``REDIS_URL``, else a ``StubBroker`` (embedded: run it with an in-process worker);
* Redis for breakers, status streams and completion: ``redis_url``, else ``REDIS_URL``;
  without one, breaker state and status events stay in this process;
* the database: ``database``, else ``DRAMATIQ_SHARED_DB_URL`` / ``DATABASE_URL``, else
  ``sqlite:///dramatiq_shared.db``; SQLite tables are created here, PostgreSQL's by
  ``dramatiq-shared init-db``;
* configs from the ``DRAMATIQ_SHARED_*`` variables (see :mod:`dramatiq_shared.config`);
  retries as Dramatiq's ``Retries`` does them by default
  (:data:`~dramatiq_shared.config.DRAMATIQ_DEFAULTS`) unless a ``retry`` config or a
  ``DRAMATIQ_SHARED_RETRY_*`` variable is given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import peewee
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, Retries

from ._checks import check_int
from .config import (
    DRAMATIQ_DEFAULTS,
    ENV_PREFIX,
    CircuitBreakerConfig,
    DatabaseConfig,
    RetryConfig,
    StatusConfig,
)
from .db.models import create_tables
from .errors import ConfigError
from .keys import DEFAULT_NAMESPACE
from .middleware import (
    CircuitBreaker,
    DeathLimit,
    ErrorHandling,
    Heartbeat,
    Retry,
    RetryBudget,
    StatusBroadcast,
)
from .servers import redis_client
from .status.broadcaster import Broadcaster, set_broadcaster
from .status.completion import CompletionTracker
from .status.transport import MemoryTransport, RedisTransport
from .stores.connection import open_database
from .stores.status_history import StatusHistory
from .workers import MessageCounts

__all__ = ["Stack", "get_stack", "setup_broker"]

_ATTRIBUTE = "_dramatiq_shared_stack"


@dataclass(frozen=True)
class Stack:
    """What :func:`setup_broker` installed on a broker, for code that needs its parts."""

    broker: dramatiq.Broker
    database: peewee.Database
    redis: redis.Redis | None
    broadcaster: Broadcaster
    completion: CompletionTracker
    breakers: CircuitBreaker
    retry: Retry
    middleware: tuple[Middleware, ...]
    #: The retry budget, when the retry config has one.
    retry_budget: RetryBudget | None = None


def setup_broker(
    broker: dramatiq.Broker | None = None,
    *,
    retry: RetryConfig | Mapping[str, Any] | None = None,
    status: StatusConfig | Mapping[str, Any] | None = None,
    database: DatabaseConfig | str | None = None,
    breakers: Mapping[str, CircuitBreakerConfig | Mapping[str, Any]] | None = None,
    redis_url: str | None = None,
    max_message_size: int | None = None,
    max_deaths: int | None = 3,
    namespace: str = DEFAULT_NAMESPACE,
) -> dramatiq.Broker:
    """Install the suite on ``broker`` (built from the environment when None) and make it
    Dramatiq's global broker.

    Calling it again on a broker that has the suite changes nothing.

    Parameters:
      broker: The broker; default from ``RABBITMQ_URL``, ``REDIS_URL``, or a StubBroker.
      retry: Retry defaults (a :class:`RetryConfig` or a mapping, camelCase accepted);
        default from ``DRAMATIQ_SHARED_RETRY_*`` when any is set, else Dramatiq's
        (:data:`~dramatiq_shared.config.DRAMATIQ_DEFAULTS`: 20 retries, 15 s to 7 days
        apart). Its ``circuit_breaker`` is the default of breakers not named in
        ``breakers``.
      status: Status broadcasting settings; default from ``DRAMATIQ_SHARED_STATUS_*``.
      database: The database (config or URL); default from the environment.
      breakers: Settings per breaker name.
      redis_url: Redis for breakers, status streams and completion; default ``REDIS_URL``.
      max_message_size: Largest encoded message in bytes (see :class:`ErrorHandling`);
        default None, no limit.
      max_deaths: Runs that killed their worker process after which a message is
        failed (see :class:`DeathLimit`; needs Redis); default 3, None counts nothing.
      namespace: Prefix of the suite's Redis keys (see :mod:`dramatiq_shared.keys`), for
        applications, or tests, sharing one Redis database; default
        ``"dramatiq_shared"``. The broker's own keys are under the broker's namespace.

    Returns:
      The broker.

    Raises:
      ConfigError: When a setting is invalid, or a broker's library is missing.
    """
    if broker is not None and getattr(broker, _ATTRIBUTE, None) is not None:
        dramatiq.set_broker(broker)
        return broker
    if max_message_size is not None:  # ErrorHandling checks it too, but only after the
        # database and the broadcaster exist: refused here, nothing is set up half-way.
        check_int("max_message_size", max_message_size, minimum=1, error=ConfigError)
    if max_deaths is not None:
        check_int("max_deaths", max_deaths, minimum=1, error=ConfigError)
    retry_config = _config(RetryConfig, retry) if retry is not None else _retry_from_env()
    status_config = _config(StatusConfig, status)
    database_config = (
        DatabaseConfig(url=database) if isinstance(database, str) else database
    ) or DatabaseConfig.from_env()
    setting = "redis_url" if redis_url else "REDIS_URL"
    redis_url = redis_url or os.environ.get("REDIS_URL")
    client = (  # first: a malformed URL is refused before any part is built
        redis_client(redis_url, setting=setting, socket_connect_timeout=0.5, socket_timeout=5.0)
        if redis_url
        else None
    )
    if broker is None:
        broker = _broker_from_env(redis_url)
    db = open_database(database_config)
    if database_config.url.startswith("sqlite"):
        create_tables(db)
    history = StatusHistory(db)
    transport = (
        RedisTransport(client, namespace=namespace)
        if client is not None
        else MemoryTransport(last_id=history.last_id)
    )
    broadcaster = Broadcaster(transport, history, status_config)
    set_broadcaster(broadcaster)
    completion = (
        CompletionTracker(broadcaster, redis_client=client, namespace=namespace)
        if client is not None
        else CompletionTracker(broadcaster, database=db)
    )
    circuit_breaker = CircuitBreaker(
        redis_client=client,
        local=client is None,
        breakers=breakers,
        default=retry_config.circuit_breaker,
        namespace=namespace,
    )
    retry_middleware = Retry(config=retry_config)
    budget = (
        RetryBudget(
            config=retry_config.budget,
            redis_client=client,
            local=client is None,
            namespace=namespace,
        )
        if retry_config.budget is not None
        else None
    )
    stack: tuple[Middleware, ...] = (
        circuit_breaker,
        *((budget,) if budget is not None else ()),
        StatusBroadcast(broadcaster=broadcaster),
        retry_middleware,
        ErrorHandling(
            database=db, redis_client=client, namespace=namespace, max_message_size=max_message_size
        ),
    )
    if client is not None:
        stack += (
            DeathLimit(client, max_deaths=max_deaths, namespace=namespace),
            Heartbeat(client, namespace=namespace),
        )
    _install(broker, stack)
    setattr(
        broker,
        _ATTRIBUTE,
        Stack(
            broker,
            db,
            client,
            broadcaster,
            completion,
            circuit_breaker,
            retry_middleware,
            stack,
            budget,
        ),
    )
    dramatiq.set_broker(broker)
    return broker


def get_stack(broker: dramatiq.Broker | None = None) -> Stack:
    """The parts :func:`setup_broker` installed on ``broker`` (default: the global broker).

    Raises:
      ConfigError: When the broker was not set up.
    """
    stack = getattr(broker or dramatiq.get_broker(), _ATTRIBUTE, None)
    if stack is None:
        raise ConfigError("the broker was not set up: call dramatiq_shared.setup_broker() first")
    assert isinstance(stack, Stack)
    return stack


def _config(kind: Any, value: Any) -> Any:
    if value is None:
        return kind.from_env()
    if isinstance(value, Mapping):
        return kind.from_mapping(value)
    if not isinstance(value, kind):
        raise ConfigError.invalid(kind.__name__, value, f"a {kind.__name__} or a mapping")
    return value


def _retry_from_env() -> RetryConfig:
    """The retry config the environment sets, or Dramatiq's defaults when it sets none."""
    budget = f"{ENV_PREFIX}RETRY_BUDGET_"
    if any(k.startswith(f"{ENV_PREFIX}RETRY_") and not k.startswith(budget) for k in os.environ):
        return RetryConfig.from_env()
    # DRAMATIQ_SHARED_BREAKER_* and ..._RETRY_BUDGET_* add to Dramatiq's defaults.
    found = RetryConfig.from_env()
    return dataclasses.replace(
        DRAMATIQ_DEFAULTS, circuit_breaker=found.circuit_breaker, budget=found.budget
    )


def _broker_from_env(redis_url: str | None) -> dramatiq.Broker:
    rabbitmq_url = os.environ.get("RABBITMQ_URL")
    if rabbitmq_url:
        try:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415 - optional
        except ImportError:
            raise ConfigError(
                "RABBITMQ_URL is set but pika is missing: pip install 'dramatiq-shared[rabbitmq]'"
            ) from None
        return RabbitmqBroker(url=rabbitmq_url)
    if redis_url:
        return RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
    return StubBroker()


def _install(broker: dramatiq.Broker, stack: tuple[Middleware, ...]) -> None:
    """Put ``stack`` where Dramatiq's Retries was (or at the end), replacing it, after
    the broker's MessageCounts (added there when it has none)."""
    if not any(isinstance(m, MessageCounts) for m in broker.middleware):
        stack = (MessageCounts(), *stack)
    position = next(
        (n for n, m in enumerate(broker.middleware) if isinstance(m, Retries)),
        len(broker.middleware),
    )
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, Retries)]
    # Recomputed without Retries' options; Retry's, added below, cover them all.
    broker.actor_options = set().union(*(m.actor_options for m in broker.middleware))
    for offset, middleware in enumerate(stack):
        broker.middleware.insert(position + offset, middleware)
        broker.actor_options |= middleware.actor_options
        for actor in list(broker.actors.values()):
            middleware.after_declare_actor(broker, actor)
