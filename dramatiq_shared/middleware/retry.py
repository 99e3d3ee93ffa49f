"""Retries with exponential backoff and jitter, in place of Dramatiq's ``Retries``.

After a failed attempt the middleware decides, records the
:class:`~dramatiq_shared.middleware.delivery.Decision` in the message's
:class:`~dramatiq_shared.middleware.delivery.Delivery` for the middleware after it
(status broadcasting, error handling), and re-enqueues a copy of the message with a
delay:

=================  =================================================================
``retry``          a retryable failure with attempts left; the copy runs after a delay
``exhausted``      ``max_attempts`` executions failed, or ``retry_when`` said no; the
                   message is failed
``not_retryable``  a ``PermanentError``, an actor's ``throws``, outside
                   ``retryable_errors``, or a ``TypeError`` of arguments that do not
                   fit the actor's signature; the message is failed
``deferred``       the actor raised ``Defer(delay)``; runs again without using an attempt
``enqueue_failed`` the copy could not be enqueued; the message is failed, so the broker
                   dead-letters it instead of acking it away (Dramatiq issue #545)
=================  =================================================================

Every option of Dramatiq's ``Retries`` keeps its meaning, on the middleware, on an
actor and (but ``retry_when``) on a message: ``max_retries`` (None retries for ever),
``min_backoff``, ``max_backoff``, ``retry_when(retries, exception)``, ``throws``,
``on_retry_exhausted`` and ``dramatiq.Retry(delay=...)``; a failure sets ``retries``,
``traceback`` and ``requeue_timestamp`` in ``message.options`` as there. Our own names
mean the same: ``max_attempts`` is ``max_retries + 1``, ``base_delay`` is
``min_backoff``, ``max_delay`` is ``max_backoff``; one actor or message giving both
spellings of one is refused. Besides: ``retryable_errors``, ``jitter`` and
``max_defers``. Options resolve message option → actor option → middleware default
(:data:`~dramatiq_shared.config.DRAMATIQ_DEFAULTS` unless a
:class:`~dramatiq_shared.config.RetryConfig` is given); an actor's are resolved once,
when it is declared.

``on_retry_exhausted`` names an actor that is sent ``(message.asdict(), info)`` when a
message fails for good, as with Dramatiq's ``Retries``; ``info`` has ``retries`` and
``max_retries`` as there, and ``attempt``, ``max_attempts``, ``action``, ``reason``,
``error_type`` and ``error_message``. As with ``Retries``, an exception in ``throws``
sends nothing; unlike it, our own final failures (a ``PermanentError``, an error outside
``retryable_errors``, a misfit, ``max_defers`` reached, a retry that could not be
enqueued) are sent too: the message will not run again, which is what a clean-up actor
needs to know. A callback that cannot be sent is logged; the message is dead-lettered
all the same.

Delays, for the n-th retry (n >= 1), ``cap = min(max_delay, base_delay * 2**(n-1))``:

=================  =================================================================
``dramatiq``       Dramatiq's: ``base_delay * 2**(n-1)`` times uniform [1, 2]; over
                   ``max_delay``, uniform in [max_delay / 2, max_delay] (the default
                   of :data:`~dramatiq_shared.config.DRAMATIQ_DEFAULTS`)
``none``           ``cap``
``full``           uniform in [0, cap]
``equal``          uniform in [cap / 2, cap]
``decorrelated``   uniform in [base_delay, min(max_delay, 3 * previous delay)], the
                   previous delay kept in ``message.options["retry_delay"]`` (the
                   default of ``RetryConfig``: spreads retries of many messages apart
                   and never waits less than ``base_delay`` nor more than ``max_delay``)
=================  =================================================================

A ``dramatiq.Retry(delay=ms)`` sets the delay as given, as in Dramatiq; an exception
with a ``retry_after`` attribute (seconds, as HTTP's header) sets it too, clamped to
``max_delay``.

A worker's ``Shutdown`` is a failed attempt like any other, as Dramatiq counts it.
"""

from __future__ import annotations

import random
import threading
import traceback
from collections import Counter
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, Retries
from loguru import logger

from .._checks import check_int
from ..config import DRAMATIQ_DEFAULTS, MAX_DELAY, RetryConfig
from ..errors import CircuitOpenError, ConfigError, Defer, PermanentError
from ..metrics import RETRY_DECISIONS
from .delivery import Action, Decision, Delivery, delivery, refusal
from .messages import BROKER_OUTAGE, qualified_name, requeue
from .retry_policy import (
    MESSAGE_KEYS,
    RetryWhen,
    Settings,
    backoff_delay,
    exception_classes,
    misfit,
    resolve_settings,
)

__all__ = ["Retry"]

#: Frames of a failure's traceback kept in ``message.options["traceback"]``, as Dramatiq.
_TRACEBACK_LIMIT = 30
_UNSET: Any = object()


class Retry(Middleware):
    """Retries failed messages with backoff and jitter; replaces Dramatiq's ``Retries``.

    Installing both would retry every failure twice over, so a broker that has both
    refuses to declare actors or boot a worker (:class:`ConfigError`).

    Parameters:
      config: Defaults for every actor. Default
        :data:`~dramatiq_shared.config.DRAMATIQ_DEFAULTS`, Dramatiq's own.
      max_retries: Dramatiq's spelling of ``config.max_attempts - 1``; None retries for
        ever. Default: the config's.
      min_backoff: Dramatiq's spelling of ``config.base_delay``. Default: the config's.
      max_backoff: Dramatiq's spelling of ``config.max_delay``. Default: the config's.
      retry_when: Dramatiq's predicate ``(retries, exception) -> bool``, deciding
        instead of ``max_retries`` for actors that set none of their own. Default None.
      max_defers: Times one message may ``Defer`` before it is failed, so nothing
        defers forever; actors may override it. Default 20.
      enqueue_attempts: Tries at enqueueing a retry before the message is failed
        (dead-lettered by the broker). Default 3.
      broker_outage: Milliseconds a lost connection to the broker is waited out when
        enqueueing a retry, before the message is failed. Default 60000.
      seed: Seed of the jitter's random numbers, for reproducible runs. Default None.

    Raises:
      ConfigError: When an argument is invalid.
    """

    def __init__(
        self,
        *,
        config: RetryConfig | None = None,
        max_retries: int | None = _UNSET,
        min_backoff: int | None = None,
        max_backoff: int | None = None,
        retry_when: RetryWhen | None = None,
        max_defers: int = 20,
        enqueue_attempts: int = 3,
        broker_outage: int = BROKER_OUTAGE,
        seed: int | None = None,
    ) -> None:
        config = DRAMATIQ_DEFAULTS if config is None else config
        if not isinstance(config, RetryConfig):
            raise ConfigError.invalid("config", config, "a RetryConfig")
        check_int("max_defers", max_defers, minimum=0, error=ConfigError)
        # None is a value of max_retries (for ever), of the others "not given".
        options: dict[str, Any] = {} if max_retries is _UNSET else {"max_retries": max_retries}
        given = {"min_backoff": min_backoff, "max_backoff": max_backoff, "retry_when": retry_when}
        options.update((k, v) for k, v in given.items() if v is not None)
        self.defaults = resolve_settings(Settings(config, max_defers), options, "Retry")
        self.config = self.defaults.config
        self.max_defers = max_defers
        self.enqueue_attempts = check_int(
            "enqueue_attempts", enqueue_attempts, minimum=1, error=ConfigError
        )
        self.broker_outage = check_int("broker_outage", broker_outage, minimum=0, error=ConfigError)
        self._random = random.Random(seed)
        self._actors: dict[str, Settings] = {}
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()

    @property
    def actor_options(self) -> set[str]:
        return {*MESSAGE_KEYS, "retry_when", "throws", "on_retry_exhausted"}

    # --- configuration, checked when actors are declared and workers boot --------

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        self._refuse_second_retry_layer(broker)
        self._actors[actor.actor_name] = self._resolve_actor(actor)

    def _resolve_actor(self, actor: dramatiq.Actor[..., Any]) -> Settings:
        where = f"actor {actor.actor_name!r}"
        throws = actor.options.get("throws")
        if throws is not None and not exception_classes(throws):
            raise ConfigError.invalid(
                f"{where}: throws", throws, "an exception class or a tuple of exception classes"
            )
        callback = actor.options.get("on_retry_exhausted")
        if callback is not None and not (isinstance(callback, str) and callback.strip()):
            raise ConfigError.invalid(f"{where}: on_retry_exhausted", callback, "an actor's name")
        settings = resolve_settings(self.defaults, actor.options, where)
        if throws is None and callback is None:
            return settings
        return Settings(settings.config, settings.max_defers, settings.retry_when, throws, callback)

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]) -> None:
        # Reached for actors declared before this middleware was added.
        if actor.actor_name not in self._actors:
            self.before_declare_actor(broker, actor)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._refuse_second_retry_layer(broker)

    def _refuse_second_retry_layer(self, broker: dramatiq.Broker) -> None:
        if any(isinstance(m, Retries) for m in broker.middleware):
            raise ConfigError(
                "the broker has both dramatiq's Retries and dramatiq_shared's Retry, so every"
                " failure would be retried twice; remove Retries first (broker.middleware ="
                " [m for m in broker.middleware if not isinstance(m, Retries)]) or use"
                " dramatiq_shared.setup_broker(), which replaces it"
            )

    def _settings(self, broker: dramatiq.Broker, message: MessageProxy) -> Settings:
        settings = self._actors.get(message.actor_name)
        if settings is None:
            # An actor this process does not know (its message failed with
            # ActorNotFound): the middleware's defaults apply.
            actor = broker.actors.get(message.actor_name)
            if actor is None:
                return self.defaults
            settings = self._actors[message.actor_name] = self._resolve_actor(actor)
        if MESSAGE_KEYS.isdisjoint(message.options):
            return settings
        try:
            return resolve_settings(settings, message.options, f"message {message.message_id}")
        except ConfigError as error:
            logger.error("Ignoring the message's retry options: {}", error)
            return settings

    # --- the decision ---------------------------------------------------------------

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        current = delivery(message)
        if exception is None:
            current.decide(Action.SUCCEEDED)
            return
        settings = self._settings(broker, message)
        action, delay, reason = self._judge(broker, message, current, exception, settings)
        if delay is not None:
            enqueued = requeue(
                broker,
                message,
                delay,
                attempts=self.enqueue_attempts,
                outage=self.broker_outage,
            )
            if not enqueued:
                action, reason = Action.ENQUEUE_FAILED, "the retry could not be enqueued"
        else:
            message.fail()
        error_type = qualified_name(type(exception))
        decision = current.decide(
            action,
            max_attempts=settings.config.max_attempts,
            delay=delay,
            reason=reason,
            error_type=error_type,
        )
        self._count(action.value, message.actor_name, error_type)
        # Patched in, not bound: the dict is built only for a record some sink takes.
        log = logger.patch(lambda record: record["extra"].update(retry_decision=decision.as_dict()))
        if not action.runs_again:
            # An expected failure's one WARNING line is ErrorHandling's, with its reason.
            level = "INFO" if isinstance(exception, PermanentError) else "WARNING"
            log.log(level, "Message {} failed for good: {}", message.message_id, reason)
            if not self._thrown(message, settings, exception):
                self._send_exhausted(broker, message, settings, decision, exception)
        else:
            log.info("Message {} {} in {} ms: {}", message.message_id, action.value, delay, reason)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        refused = refusal(message)
        if refused is None:
            return
        # Failed before it ran (DeathLimit, AgeLimit, a deferral that could not be
        # enqueued): failed for good, so its actor's on_retry_exhausted hears of it.
        current = delivery(message)
        settings = self._settings(broker, message)
        error_type = qualified_name(type(refused))
        decision = current.decision or current.decide(
            Action.NOT_RETRYABLE,
            max_attempts=settings.config.max_attempts,
            reason=str(refused),
            error_type=error_type,
        )
        self._count(decision.action.value, message.actor_name, decision.error_type or error_type)
        self._send_exhausted(broker, message, settings, decision, refused)

    @staticmethod
    def _thrown(message: MessageProxy, settings: Settings, exception: BaseException) -> bool:
        """Whether ``exception`` is one the actor (or message) declared in ``throws``."""
        throws = message.options.get("throws") or settings.throws
        return throws is not None and isinstance(exception, throws)

    def _send_exhausted(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        settings: Settings,
        decision: Decision,
        exception: BaseException,
    ) -> None:
        target = message.options.get("on_retry_exhausted") or settings.on_retry_exhausted
        if not target:
            return
        max_attempts = decision.max_attempts
        info = {
            "retries": decision.attempt - 1,
            "max_retries": None if max_attempts is None else max_attempts - 1,
            "attempt": decision.attempt,
            "max_attempts": max_attempts,
            "action": decision.action.value,
            "reason": decision.reason,
            "error_type": decision.error_type,
            "error_message": str(exception)[:2_000],
        }
        try:
            broker.get_actor(target).send(message.asdict(), info)
        except Exception as error:  # the message is dead-lettered: nothing is lost
            logger.opt(exception=error).error(
                "Could not send the failure of message {} to {}: {}",
                message.message_id,
                target,
                error,
            )

    def _judge(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        current: Delivery,
        exception: BaseException,
        settings: Settings,
    ) -> tuple[Action, int | None, str]:
        """The action, the delay (None to fail the message) and the reason."""
        options = message.options
        if isinstance(exception, Defer):
            defers = options.get("defers", 0)
            if defers >= settings.max_defers:
                current.record_failure(message, exception)
                reason = f"deferred {defers} times, max_defers is {settings.max_defers}"
                return Action.EXHAUSTED, None, reason
            options["defers"] = defers + 1
            return Action.DEFERRED, min(exception.delay, MAX_DELAY), exception.reason
        if isinstance(exception, CircuitOpenError):
            # A breaker used inside the actor refused the call: wait for it, as a
            # message of a breaker-guarded actor does.
            wait = self._breaker_delay(current, exception.remaining)
            return Action.DEFERRED, wait, str(exception)
        current.record_failure(message, exception)
        if self._thrown(message, settings, exception):
            # As Retries: failed at once, not counted in ``retries``.
            reason = f"{type(exception).__name__} is in the actor's throws"
            return Action.NOT_RETRYABLE, None, reason
        action, delay, reason = self._decide(broker, message, exception, settings, current.attempt)
        if action in (Action.RETRY, Action.EXHAUSTED) and current.breaker is not None:
            verdict = current.breaker.report(exception)
            if verdict.is_open:
                # The outage, not the message, is at fault: no attempt is used.
                wait = self._breaker_delay(current, verdict.remaining)
                return Action.DEFERRED, wait, "its circuit breaker is open"
        options["retries"] = current.attempt
        options["traceback"] = "".join(
            traceback.format_exception(
                type(exception), exception, exception.__traceback__, limit=_TRACEBACK_LIMIT
            )
        )
        return action, delay, reason

    def _breaker_delay(self, current: Delivery, remaining: int) -> int:
        if current.breaker is not None:
            delay: int = current.breaker.deferral_delay(remaining)
            return delay
        with self._lock:
            jitter: int = self._random.randint(0, 1_000)
        return remaining + jitter

    def _decide(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        exception: BaseException,
        settings: Settings,
        attempt: int,
    ) -> tuple[Action, int | None, str]:
        config = settings.config
        if isinstance(exception, TypeError):
            unfit = misfit(broker.actors.get(message.actor_name), message)
            if unfit is not None:
                return Action.NOT_RETRYABLE, None, unfit
        if not config.is_retryable(exception):
            return Action.NOT_RETRYABLE, None, f"{type(exception).__name__} is not retryable"
        of = "" if config.max_attempts is None else f" of {config.max_attempts}"
        if settings.retry_when is not None:
            if not settings.retry_when(attempt - 1, exception):
                return Action.EXHAUSTED, None, f"retry_when refused retry {attempt}"
        elif config.max_attempts is not None and attempt >= config.max_attempts:
            return Action.EXHAUSTED, None, f"all {config.max_attempts} attempts failed"
        delay = self._delay(message, exception, config, attempt)
        return Action.RETRY, delay, f"attempt {attempt}{of} failed"

    def _delay(
        self,
        message: MessageProxy,
        exception: BaseException,
        config: RetryConfig,
        retry: int,
    ) -> int:
        asked = getattr(exception, "retry_after", None)
        if isinstance(exception, dramatiq.Retry) and exception.delay is not None:
            delay = max(0, exception.delay)  # as asked: Retries does not clamp it either
        elif isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked >= 0:
            delay = max(0, min(round(asked * 1000), config.max_delay))
        else:
            previous = message.options.get("retry_delay")
            with self._lock:  # random.Random is not safe to share between threads
                delay = backoff_delay(str(config.jitter), retry, config, previous, self._random)
        message.options["retry_delay"] = delay
        return delay

    # --- counters for the metrics ----------------------------------------------------

    def _count(self, action: str, actor: str, error_type: str) -> None:
        with self._lock:
            self._counts[(action, actor, error_type)] += 1
        RETRY_DECISIONS.labels(actor, error_type, action).inc()

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Decisions taken in this process, by (action, actor name, error type)."""
        with self._lock:
            return dict(self._counts)
