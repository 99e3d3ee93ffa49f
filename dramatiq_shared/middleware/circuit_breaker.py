"""Circuit breaking for actors: ``@dramatiq.actor(breaker="usda-api")``.

Before a message of a breaker-guarded actor runs, the middleware asks the actor's
breaker (shared by every worker process through Redis, see
:mod:`dramatiq_shared.breakers`). While the breaker is open the message is not
executed: it is re-enqueued with a delay of the breaker's remaining open time plus
jitter, without consuming an attempt, and only then skipped (storing no result in
Dramatiq's ``Results``, which its copy does once it runs). If that re-enqueue fails
the message is failed, so the broker dead-letters it rather than acking it away.

After the message runs, its outcome is reported to the breaker: a success (which may
close a half-open breaker) or a counted failure (which may open it). Failures of
excluded errors, ``PermanentError``/``ValidationError``, ``Defer`` and Dramatiq's
``Shutdown`` are not counted; ``TimeLimitExceeded`` is.

The breaker's ticket travels in the message's
:class:`~dramatiq_shared.middleware.delivery.Delivery`, so that with the
:class:`~dramatiq_shared.middleware.Retry` middleware, a failure after which the
breaker is open (the one that tripped it, a failed trial, or one that finished
while it was open) does not consume an attempt either: the outage, not the message, is
at fault, and the message waits for the breaker like the others.

Actors may use the same breakers around single calls, sharing their state:
``with middleware.breakers["usda-api"]: ...``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from .._checks import check_int
from .._redis import state_client
from ..breakers import Breakers, check_breaker_name
from ..config import CircuitBreakerConfig
from ..errors import CircuitOpenError, ConfigError
from .delivery import BreakerCall, defer, delivery
from .messages import BROKER_OUTAGE

__all__ = ["CircuitBreaker"]


class CircuitBreaker(Middleware):
    """Guards actors with named circuit breakers whose state all workers share.

    Parameters:
      redis_client: The Redis client holding the breakers' state.
      redis_url: Or its URL; default ``REDIS_URL``. One of the two is required.
      breakers: Settings per breaker name: :class:`CircuitBreakerConfig` or mappings.
      default: Settings of breakers not named in ``breakers``. Default
        ``CircuitBreakerConfig()``.
      namespace: Prefix of the Redis keys. Default ``"dramatiq_shared"``.
      fallback: ``"closed"`` (run messages, unrecorded) or ``"open"`` (defer them)
        while Redis is unreachable. Default ``"closed"``.
      jitter: Most milliseconds added at random to a deferral, so deferred messages do
        not all return at one instant. Default 1000.
      enqueue_attempts: Tries at re-enqueueing a deferred message before failing it.
        Default 3.
      broker_outage: Milliseconds a lost connection to the broker is waited out when
        re-enqueueing a deferred message, before it is failed. Default 60000.
      local: Keep the state in this process instead of Redis: for an embedded run
        (StubBroker, one process). Default False.

    Raises:
      ConfigError: When no Redis is given or a setting is invalid.
    """

    def __init__(
        self,
        *,
        redis_client: redis.Redis | None = None,
        redis_url: str | None = None,
        breakers: Mapping[str, CircuitBreakerConfig | Mapping[str, Any]] | None = None,
        default: CircuitBreakerConfig | None = None,
        namespace: str = "dramatiq_shared",
        fallback: str = "closed",
        jitter: int = 1_000,
        enqueue_attempts: int = 3,
        broker_outage: int = BROKER_OUTAGE,
        local: bool = False,
    ) -> None:
        if not local:
            redis_client = state_client("CircuitBreaker", redis_client, redis_url)
        self.breakers = Breakers(
            redis_client, configs=breakers, default=default, namespace=namespace, fallback=fallback
        )
        self.jitter = check_int("jitter", jitter, minimum=0, error=ConfigError)
        self.enqueue_attempts = check_int(
            "enqueue_attempts", enqueue_attempts, minimum=1, error=ConfigError
        )
        self.broker_outage = check_int("broker_outage", broker_outage, minimum=0, error=ConfigError)

    @property
    def actor_options(self) -> set[str]:
        return {"breaker"}

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        name = actor.options.get("breaker")
        if name is not None:
            try:
                check_breaker_name(name)
            except ConfigError as error:
                raise ConfigError(f"actor {actor.actor_name!r}: {error}", field="breaker") from None

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        current = delivery(message)
        name = self._breaker_name(broker, current.message)
        if name is None:
            return
        breaker = self.breakers[name]
        try:
            ticket = breaker.acquire()
        except CircuitOpenError as error:
            self._defer(broker, message, error)
            raise SkipMessage(str(error)) from None
        current.breaker = BreakerCall(breaker, ticket, self.deferral_delay)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        call = delivery(message).breaker
        if call is not None:  # Retry may have reported a failure already
            call.report(exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        # Skipped by a middleware after this one: the call never happened.
        call = delivery(message).breaker
        if call is not None:
            call.release()

    def deferral_delay(self, remaining: int) -> int:
        """The delay of a message deferred for an open breaker: remaining time plus jitter."""
        return remaining + random.randint(0, self.jitter)

    def _breaker_name(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> str | None:
        name = message.options.get("breaker")
        if name is None:
            actor = broker.actors.get(message.actor_name)
            name = actor.options.get("breaker") if actor else None
        return name if isinstance(name, str) else None

    def _defer(
        self, broker: dramatiq.Broker, message: MessageProxy, error: CircuitOpenError
    ) -> None:
        delay = self.deferral_delay(error.remaining)
        defer(
            broker,
            message,
            delay,
            error,
            counter="breaker_deferrals",
            attempts=self.enqueue_attempts,
            outage=self.broker_outage,
        )
