"""A fleet-wide retry budget: ``RetryConfig(budget=RetryBudgetConfig(ratio=0.1))``.

Retries multiply the load on a downstream that is already failing: with 3 attempts, an
outage triples the calls. A budget caps them, as AWS SDKs cap retries a client with a
token bucket and Google SRE caps them at 10% of requests: a retry may run while the
retries of the last ``window``, this one included, are at most ``ratio`` x the
successes of the window + ``minimum`` x its seconds, counted across every worker
process through Redis (see :mod:`dramatiq_shared.budgets`).

Each budget has a name: the message option ``retry_budget``, else the actor's, else
the actor's ``breaker`` (a budget a downstream), else the actor's name. The budget is
spent when a retry is about to run, in ``before_process_message`` of a message whose
``retries`` (set by :class:`~dramatiq_shared.middleware.Retry` when it schedules a
retry) is above the retries already admitted (``retry_budget_admitted`` in its
options), so a retry is charged once, however often a breaker or ``Defer`` sends it
back, and a refused one never calls the service. A refused retry is:

=================  =================================================================
``defer``          re-enqueued for when the oldest counted retry leaves the window,
                   plus up to ``jitter`` ms, without using an attempt (as a message an
                   open breaker holds back; counted in ``retry_budget_deferrals``, not
                   against ``max_defers``: the fleet's state, not the message, is at
                   fault); Decision DEFERRED, a RETRYING status event with the reason
``dead_letter``    failed for good (Decision EXHAUSTED): dead-lettered, its
                   ``on_retry_exhausted`` sent, a FAILED status event
=================  =================================================================

Either way the Decision's ``error_type`` is
:class:`~dramatiq_shared.errors.RetryBudgetExhaustedError` and its reason names the
budget, and the refusal is counted in ``dramatiq_shared_retry_budget_refused_total``.
Every success (a first attempt or a retry) adds to its budget, in batches (a healthy
message costs Redis no command). Redis unreachable: the retry runs (fail open), the
outage logged once.
"""

from __future__ import annotations

import random
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from .._checks import check_int, check_name
from .._redis import state_client
from ..budgets import BudgetReply, Budgets
from ..config import RetryBudgetConfig
from ..errors import ConfigError, RetryBudgetExhaustedError
from ..keys import DEFAULT_NAMESPACE
from ..metrics import RETRY_BUDGET_REFUSED
from .delivery import Action, defer, delivery
from .messages import BROKER_OUTAGE, proxied, qualified_name

__all__ = ["RetryBudget"]

_ERROR_TYPE = qualified_name(RetryBudgetExhaustedError)


class RetryBudget(Middleware):
    """Caps the retries of every worker process with named, shared retry budgets.

    Put it after :class:`~dramatiq_shared.middleware.CircuitBreaker` (a message an
    open breaker holds back spends nothing) and before
    :class:`~dramatiq_shared.middleware.StatusBroadcast` (a refused retry is not
    reported as started).

    Parameters:
      config: The settings of every budget. Default ``RetryBudgetConfig()``.
      redis_client: The Redis client holding the budgets.
      redis_url: Or its URL; default ``REDIS_URL``. One of the two is required unless
        ``local``.
      namespace: Prefix of the Redis keys. Default ``"dramatiq_shared"``.
      jitter: Most milliseconds added at random to a deferral, so refused retries do
        not all come back at one instant. Default (None) the budget's window.
      enqueue_attempts: Tries at re-enqueueing a deferred retry before failing it.
        Default 3.
      broker_outage: Milliseconds a lost connection to the broker is waited out when
        re-enqueueing a deferred retry, before it is failed. Default 60000.
      local: Keep the budgets in this process instead of Redis: for an embedded run
        (StubBroker, one process). Default False.

    Raises:
      ConfigError: When no Redis is given or a setting is invalid.
    """

    def __init__(
        self,
        *,
        config: RetryBudgetConfig | None = None,
        redis_client: redis.Redis | None = None,
        redis_url: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        jitter: int | None = None,
        enqueue_attempts: int = 3,
        broker_outage: int = BROKER_OUTAGE,
        local: bool = False,
    ) -> None:
        config = RetryBudgetConfig() if config is None else config
        if not isinstance(config, RetryBudgetConfig):
            raise ConfigError.invalid("config", config, "a RetryBudgetConfig")
        if not local:
            redis_client = state_client("RetryBudget", redis_client, redis_url)
        self.config = config
        self.budgets = Budgets(redis_client, config, namespace=namespace)
        self.jitter = config.window if jitter is None else jitter
        check_int("jitter", self.jitter, minimum=0, error=ConfigError)
        self.enqueue_attempts = check_int(
            "enqueue_attempts", enqueue_attempts, minimum=1, error=ConfigError
        )
        self.broker_outage = check_int("broker_outage", broker_outage, minimum=0, error=ConfigError)
        self._names: dict[str, str] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"retry_budget"}

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        name = actor.options.get("retry_budget")
        if name is not None:
            try:
                check_name("retry_budget", name)
            except ConfigError as error:
                raise ConfigError(
                    f"actor {actor.actor_name!r}: {error}", field="retry_budget"
                ) from None
        breaker = actor.options.get("breaker")
        self._names[actor.actor_name] = name or (
            breaker if isinstance(breaker, str) else actor.actor_name
        )

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]) -> None:
        # Reached for actors declared before this middleware was added.
        if actor.actor_name not in self._names:
            self.before_declare_actor(broker, actor)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        options = proxied(message).options
        retries = options.get("retries")
        if not retries or retries <= options.get("retry_budget_admitted", 0):
            return  # a first attempt, or a retry admitted already and sent back since
        name = self._name(message)
        reply = self.budgets.spend(name)
        if reply is None or reply.admitted:
            options["retry_budget_admitted"] = retries
            return
        RETRY_BUDGET_REFUSED.labels(name).inc()
        error = RetryBudgetExhaustedError(name, reply.retries, reply.allowance, reply.wait)
        if self.config.when_refused == "dead_letter":
            current = delivery(message)
            current.record_failure(message, error)
            current.decide(Action.EXHAUSTED, reason=str(error), error_type=_ERROR_TYPE)
            message.fail()
        else:
            self._defer(broker, message, error, reply)
        raise error

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            self.budgets.succeeded(self._name(message))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.budgets.close()

    def _name(self, message: MessageProxy) -> str:
        """The budget the message spends: its own option, else its actor's (resolved
        when the actor was declared), else its actor's name."""
        fields = proxied(message)
        asked = fields.options.get("retry_budget")
        if isinstance(asked, str) and asked:
            return asked
        return self._names.get(fields.actor_name, fields.actor_name)

    def _defer(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        error: RetryBudgetExhaustedError,
        reply: BudgetReply,
    ) -> None:
        delay = reply.wait + random.randint(0, self.jitter)
        defer(
            broker,
            message,
            delay,
            error,
            counter="retry_budget_deferrals",
            attempts=self.enqueue_attempts,
            outage=self.broker_outage,
        )
