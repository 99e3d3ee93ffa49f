"""Error handling: every failed attempt logged with its context, clean-up hooks, dead letters.

For each message the middleware binds the message's identity (id, actor, queue,
import and note ids) to every log record while it runs. When an attempt fails it

* runs the actor's ``on_error(message, exception)`` hook, in the worker thread, for
  clean-up (an ``async def`` hook on the event loop of Dramatiq's ``AsyncIO``
  middleware, waited for); a hook that raises is logged and changes nothing else;
* logs one record at ERROR, ``"Action execution failed"``, once the retry decision is
  known (it is emitted as the broker acks or nacks the delivery), bound with
  ``message_id``, ``actor``, ``queue``, ``attempt``, ``max_attempts``, ``will_retry``,
  ``error_type``, ``error_message``, ``duration_ms``, the import and note ids when the
  message carries them, and the traceback. What is expected and handled is logged
  without a traceback: a ``PermanentError`` (a ``ValidationError`` of bad input, say)
  as one WARNING line, and what Dramatiq's worker keeps out of its error log (a
  ``dramatiq.Retry``, ``RateLimitExceeded``, an exception in the actor's ``throws``)
  at INFO, or WARNING when the message failed for good. A deferral, which consumes no
  attempt, is logged at INFO. Dramatiq's worker logs an unhandled failure too
  ("Failed to process message ... with unhandled exception."): while this
  middleware's worker runs, that line keeps its text but not its traceback, so each
  failure's traceback is formatted once (a ``PermanentError``'s line becomes INFO, as
  Dramatiq logs an actor's ``throws``);
* on a final failure writes the message, its options and its error history to the
  dead-letters table, when it was given a database: made on SQLite at worker boot, its
  absence on PostgreSQL stops the boot; what the database refuses is kept until it
  takes it (:mod:`~dramatiq_shared.middleware.spool`). A message a middleware failed
  before its actor ran (``DeathLimit``, Dramatiq's ``AgeLimit``, a deferral that could
  not be enqueued) is a final failure too: one WARNING line, ``"Message … failed
  before it ran: <reason>"``, and a dead letter with the reason; its ``on_error`` hook
  does not run, as the actor did not.

On Redis it also keeps a body that cannot be decoded from taking the worker's consumer
down with it: the body goes to the queue's dead-letter queue (as on RabbitMQ), is
logged, and is written to the dead-letters table (see
:func:`~dramatiq_shared.middleware.messages.guard_decoding`).

It reads the decision of :class:`~dramatiq_shared.middleware.Retry`, when installed,
from the message's :class:`~dramatiq_shared.middleware.delivery.Delivery`; alone, it
judges by what the broker is told. Either way the failure is added to the error
history in the message once per delivery, before any retry is enqueued.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any

import dramatiq
import peewee
import redis
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound, RateLimitExceeded
from dramatiq.middleware import Middleware, SkipMessage
from loguru import logger

from .._checks import check_int
from ..config import DatabaseConfig
from ..errors import ConfigError, MessageTooLargeError, PermanentError
from ..keys import DEFAULT_NAMESPACE
from ..logging import WORKER_RECORDS, message_context
from ..metrics import ERRORS
from ..stores.dead_letters import DeadLetterStore
from .delivery import Delivery, delivery, is_deferral, refusal, seen
from .messages import guard_decoding, qualified_name
from .spool import DeadLetterSpool

__all__ = ["ErrorHandling"]

#: Characters of an error message logged.
_MESSAGE_LIMIT = 2_000


class ErrorHandling(Middleware):
    """Logs failed attempts with context, runs ``on_error`` hooks, records dead letters.

    Parameters:
      database: Where dead letters are written: a database from
        :func:`~dramatiq_shared.db.init_database`, a :class:`DatabaseConfig`, or a URL.
        None (the default) keeps them only in the broker's dead-letter queue.
      redis_client: Where dead letters the database refuses are kept until it takes
        them, shared by every worker process. Default None: the broker's own client on
        a RedisBroker, else this process's memory.
      namespace: Prefix of that Redis key (see :mod:`dramatiq_shared.keys`). Default
        ``"dramatiq_shared"``.
      max_message_size: Largest encoded message, in bytes: a larger one is refused at
        ``send()`` with a :class:`MessageTooLargeError`, and one that arrives anyway (from
        another producer) fails at once and is dead-lettered. Default None: no limit.

    Raises:
      ConfigError: When ``max_message_size`` is not an int >= 1.
    """

    def __init__(
        self,
        *,
        database: peewee.Database | DatabaseConfig | str | None = None,
        redis_client: redis.Redis | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        max_message_size: int | None = None,
    ) -> None:
        self.dead_letters = DeadLetterStore(database) if database is not None else None
        #: Keeps what the database refuses.
        self.spool = (
            DeadLetterSpool(self.dead_letters, redis_client=redis_client, namespace=namespace)
            if self.dead_letters is not None
            else None
        )
        if max_message_size is not None:
            check_int("max_message_size", max_message_size, minimum=1, error=ConfigError)
        self.max_message_size = max_message_size

    @property
    def actor_options(self) -> set[str]:
        return {"on_error"}

    def before_declare_actor(
        self, broker: dramatiq.Broker, actor: dramatiq.Actor[..., Any]
    ) -> None:
        hook = actor.options.get("on_error")
        if hook is not None and not callable(hook):
            raise ConfigError.invalid(
                f"actor {actor.actor_name!r}: on_error", hook, "a callable (message, exception)"
            )

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.spool is not None:
            self.spool.open(broker)  # first: a missing table stops the boot
        guard_decoding(broker, self._undecodable)
        WORKER_RECORDS.install()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        WORKER_RECORDS.uninstall()
        if self.spool is not None:
            self.spool.close()

    def _undecodable(
        self, queue_name: str, message_id: str | None, body: bytes, error: BaseException
    ) -> None:
        reason = "its body could not be decoded as a message"
        error_type = qualified_name(type(error))
        logger.bind(queue=queue_name, message_id=message_id, error_type=error_type).error(
            "Message {} on queue {} set aside in its dead-letter queue: {} ({})",
            message_id or "(id not found)",
            queue_name,
            reason,
            error,
        )
        ERRORS.labels("", error_type).inc()
        if self.spool is not None and message_id is not None:
            raw = {
                "queue_name": queue_name,
                "actor_name": "",
                "message_id": message_id,
                "options": {},
                "body": body[:_MESSAGE_LIMIT].decode("utf-8", "replace"),
            }
            self.spool.bury(raw, error_type=error_type, error_message=str(error), reason=reason)

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int
    ) -> None:
        self._check_size(message)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        current = delivery(message)
        actor = broker.actors.get(current.message.actor_name)
        scope = message_context(current.message, actor, ids=current.ids(actor))
        scope.__enter__()
        current.log_scope = scope
        self._check_size(message)  # raised here, it fails the message: not retryable

    def _check_size(self, message: dramatiq.Message[Any] | MessageProxy) -> None:
        if self.max_message_size is None:
            return
        size = len(message.encode())
        if size > self.max_message_size:
            raise MessageTooLargeError(
                f"message {message.message_id} for {message.actor_name} is {size:,} bytes"
                f" encoded, more than max_message_size ({self.max_message_size:,})",
                field="message",
            )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        current = delivery(message)
        if exception is None or current.log_scope is None:
            return
        current.finish(exception)
        if not is_deferral(exception):
            current.record_failure(message, exception)
        actor = broker.actors.get(message.actor_name)
        hook = actor.options.get("on_error") if actor else None
        if hook is not None:
            try:
                outcome = hook(message, exception)
                if inspect.isawaitable(outcome):  # an ``async def`` hook
                    _await(outcome)
            except Exception as error:
                logger.opt(exception=error).error(
                    "The on_error hook of actor {} raised {}; the message's outcome stands",
                    message.actor_name,
                    type(error).__name__,
                )

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        refused = refusal(message)
        if refused is not None:  # failed before it ran: reported, and buried, at the nack
            current = delivery(message)
            current.finish(refused)
            current.record_failure(message, refused)

    def before_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._finish(broker, message)

    def before_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if seen(message):
            self._finish(broker, message)
        else:
            self._refused(broker, message)

    def _refused(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        # Failed before it ran: Dramatiq's worker refuses a message for an actor it
        # does not know, and moves it to the dead-letter queue without processing it.
        exception = getattr(message, "_exception", None)
        if not isinstance(exception, ActorNotFound) or self.spool is None:
            return
        fields = {"error_type": qualified_name(ActorNotFound), "error_message": str(exception)}
        reason = f"no actor {message.actor_name!r} is declared in this worker"
        self.spool.bury(message.asdict(), reason=reason, **fields)

    def _finish(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        current = delivery(message)
        scope, current.log_scope = current.log_scope, None
        # Let go of the exception: a broker may keep the message (the StubBroker's dead
        # letters), and the exception's traceback holds every frame it passed through.
        exception, current.exception = current.exception, None
        if exception is None:
            if scope is not None:
                scope.__exit__(None, None, None)
            return
        if scope is None:  # failed by a middleware before this one saw it start
            actor = broker.actors.get(current.message.actor_name)
            scope = message_context(current.message, actor, ids=current.ids(actor))
            scope.__enter__()
        try:
            self._report(broker, message, current, exception)
        finally:
            scope.__exit__(None, None, None)

    def _report(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        current: Delivery,
        exception: BaseException,
    ) -> None:
        decision = current.decision  # None without Retry: judge by what the broker is told
        will_retry = decision.action.runs_again if decision else not message.failed
        fields: dict[str, Any] = {
            "attempt": current.attempt,
            "max_attempts": decision.max_attempts if decision else _max_attempts(broker, message),
            "will_retry": will_retry,
            "error_type": qualified_name(type(exception)),
            "error_message": str(exception)[:_MESSAGE_LIMIT],
            "duration_ms": current.duration_ms,
        }
        record = logger.bind(**fields)
        if decision is not None and not decision.action.used_attempt:
            record.opt(exception=exception).info(
                "Action {}: {}", decision.action.value, decision.reason
            )
        elif _expected(broker, message, exception):
            record.log("WARNING" if message.failed else "INFO", "Action execution failed")
        elif isinstance(exception, SkipMessage):  # failed by a middleware: it never ran
            record.warning("Message {} failed before it ran: {}", message.message_id, exception)
            ERRORS.labels(message.actor_name, fields["error_type"]).inc()
        elif isinstance(exception, PermanentError):
            # Expected and handled (bad input, say): one WARNING line, the reason in
            # error_message; a traceback would only show where the check was.
            record.warning("Action execution failed")
            ERRORS.labels(message.actor_name, fields["error_type"]).inc()
        else:
            record.opt(exception=exception).error("Action execution failed")
            ERRORS.labels(message.actor_name, fields["error_type"]).inc()
        if message.failed and self.spool is not None:
            self.spool.bury(
                message.asdict(),
                error_type=fields["error_type"],
                error_message=fields["error_message"],
                reason=(decision and decision.reason) or "failed",
            )


def _await(outcome: Awaitable[Any]) -> None:
    """Run what an ``async def`` on_error hook returned to its end, on the event loop
    Dramatiq's ``AsyncIO`` middleware runs async actors on, from this worker thread.

    Raises:
      ConfigError: When no such loop runs (the coroutine is closed, never started).
    """
    loop_thread = get_event_loop_thread()
    if loop_thread is None:
        if inspect.iscoroutine(outcome):
            outcome.close()  # never awaited, and said so below rather than by a warning
        raise ConfigError(
            "an async on_error hook runs on the event loop of Dramatiq's AsyncIO"
            " middleware: add dramatiq.middleware.AsyncIO() to the broker"
        )
    loop_thread.run_coroutine(outcome)


def _expected(broker: dramatiq.Broker, message: MessageProxy, exception: BaseException) -> bool:
    """Whether ``exception`` steers the message rather than reporting a fault, as
    Dramatiq's worker tells them apart (it logs none of them as errors)."""
    if isinstance(exception, (dramatiq.Retry, RateLimitExceeded)):
        return True
    actor = broker.actors.get(message.actor_name)
    throws = message.options.get("throws") or (actor.options.get("throws") if actor else None)
    return throws is not None and isinstance(exception, throws)


def _max_attempts(broker: dramatiq.Broker, message: MessageProxy) -> int | None:
    """max_attempts as Dramatiq's own options give it, when no Retry decided."""
    actor = broker.actors.get(message.actor_name)
    options = {**(actor.options if actor else {}), **message.options}
    if isinstance(options.get("max_attempts"), int):
        return int(options["max_attempts"])
    if isinstance(options.get("max_retries"), int):
        return int(options["max_retries"]) + 1
    return None
