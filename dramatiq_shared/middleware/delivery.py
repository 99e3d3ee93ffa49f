"""One object per delivery of a message: what the middleware tell each other about it.

A delivery is one run of a message in this worker process, from the first
``before_process_message`` to the ack or nack. :func:`delivery` gives the middleware
its :class:`Delivery`, kept on the message proxy, so it lives exactly as long as the
delivery does, never travels with a retry, and is never confused with another
delivery of the same message id. Who writes what:

=====================  ===========================  ===============================
field                  written by                   read by
=====================  ===========================  ===============================
``attempt``            whoever asks first           all
``decision``           Retry, CircuitBreaker,       StatusBroadcast, ErrorHandling
                       RetryBudget (``defer``)
``breaker``            CircuitBreaker               Retry (the verdict after a
                                                    failure)
``log_scope``,         ErrorHandling                ErrorHandling
``exception``,
``duration_ms``
``ids()``              whoever asks first           StatusBroadcast (both events),
                                                    ErrorHandling (the log context)
``death_watch``        DeathLimit                   DeathLimit (what to clear at the
                                                    outcome, the isolation held)
``status_event``       StatusBroadcast              StatusBroadcast (the delivery's
                                                    PROCESSING event, which the next
                                                    event is made from)
=====================  ===========================  ===============================

The middleware import this module, never each other: each works alone on a broker,
and reads a missing field as "no middleware of that kind is installed".
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from ..errors import CircuitOpenError, Defer
from ..logging import carried_all
from .messages import BROKER_OUTAGE, proxied, qualified_name, record_failure, requeue

if TYPE_CHECKING:
    from ..status.events import StatusEvent

__all__ = [
    "Action",
    "BreakerCall",
    "Decision",
    "Delivery",
    "defer",
    "delivery",
    "is_deferral",
    "refusal",
    "seen",
]

_ATTRIBUTE = "_dramatiq_shared_delivery"


class Action(str, enum.Enum):
    """What became of a delivery."""

    #: A retryable failure with attempts left: a copy runs after a delay.
    RETRY = "retry"
    #: ``max_attempts`` executions failed (or ``max_defers`` deferrals): failed for good.
    EXHAUSTED = "exhausted"
    #: A failure that retrying would not mend: failed for good.
    NOT_RETRYABLE = "not_retryable"
    #: Runs again after a delay without using an attempt (``Defer``, an open breaker).
    DEFERRED = "deferred"
    #: The copy that would run again could not be enqueued: failed, so dead-lettered.
    ENQUEUE_FAILED = "enqueue_failed"
    #: The actor returned.
    SUCCEEDED = "succeeded"

    @property
    def runs_again(self) -> bool:
        """Whether a copy of the message will run."""
        return self in _RUNS_AGAIN

    @property
    def used_attempt(self) -> bool:
        """Whether the delivery failed and counted as an attempt."""
        return self not in (Action.DEFERRED, Action.SUCCEEDED)


_RUNS_AGAIN = frozenset((Action.RETRY, Action.DEFERRED))


@dataclass(frozen=True)
class Decision:
    """What the retry layer (or a breaker holding the message back) decided."""

    action: Action
    attempt: int
    max_attempts: int | None = None
    #: Milliseconds until the copy runs, when one does.
    delay: int | None = None
    reason: str = ""
    #: The qualified name of the error's class, when it failed.
    error_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The decision as plain values, for a log record."""
        fields = asdict(self)
        fields["action"] = self.action.value
        return fields


class Breaker(Protocol):
    """What a :class:`BreakerCall` needs of a circuit breaker."""

    def record_success(self, ticket: Any) -> Any: ...

    def record_failure(self, ticket: Any, error: BaseException) -> Any: ...

    def release(self, ticket: Any) -> None: ...


class BreakerCall:
    """A breaker-guarded delivery: its breaker, its ticket, and the verdict once reported.

    Parameters:
      breaker: The breaker the actor runs under.
      ticket: What the breaker's ``acquire()`` gave.
      deferral_delay: Turns a breaker's remaining open time (ms) into the delay of a
        message deferred for it.
    """

    __slots__ = ("_breaker", "_ticket", "deferral_delay", "reported", "verdict")

    def __init__(self, breaker: Breaker, ticket: Any, deferral_delay: Callable[[int], int]) -> None:
        self._breaker = breaker
        self._ticket = ticket
        self.deferral_delay = deferral_delay
        self.reported = False
        self.verdict: Any = None

    def report(self, exception: BaseException | None) -> Any:
        """Tell the breaker how the call ended, once; later calls return the same verdict."""
        if not self.reported:
            self.reported = True
            if exception is None:
                self.verdict = self._breaker.record_success(self._ticket)
            else:
                self.verdict = self._breaker.record_failure(self._ticket, exception)
        return self.verdict

    def release(self) -> None:
        """Give the breaker its permission back unused: the call never happened."""
        if not self.reported:
            self.reported = True
            self._breaker.release(self._ticket)


class Delivery:
    """What the middleware know of one delivery; get it with :func:`delivery`."""

    __slots__ = (
        "_ids",
        "attempt",
        "breaker",
        "death_watch",
        "decision",
        "duration_ms",
        "exception",
        "failure_recorded",
        "log_scope",
        "message",
        "started",
        "status_event",
    )

    def __init__(self, message: dramatiq.Message[Any]) -> None:
        #: The message the proxy wraps, for reading its fields (see ``proxied``).
        self.message = message
        self.attempt: int = message.options.get("retries", 0) + 1
        self.started = time.monotonic()
        self.decision: Decision | None = None
        self.breaker: BreakerCall | None = None
        self.log_scope: AbstractContextManager[None] | None = None
        self.exception: BaseException | None = None
        self.duration_ms = 0.0
        self.failure_recorded = False
        #: ``(field of its count to clear at the outcome, isolation held, lone runs
        #: before this delivery)``, DeathLimit's.
        self.death_watch: tuple[str, str, int] | None = None
        #: The PROCESSING event StatusBroadcast published for this delivery.
        self.status_event: StatusEvent | None = None
        self._ids: tuple[Any, ...] | None = None

    def finish(self, exception: BaseException | None) -> None:
        """Note how the actor's run ended, and how long it took."""
        self.exception = exception
        self.duration_ms = round((time.monotonic() - self.started) * 1000, 1)

    def ids(self, actor: dramatiq.Actor[..., Any] | None) -> tuple[Any, ...]:
        """``(import_id, note_id)`` the message carries, looked up once a delivery."""
        if self._ids is None:
            self._ids = carried_all(self.message, ("import_id", "note_id"), actor)
        return self._ids

    def record_failure(self, message: MessageProxy, exception: BaseException) -> None:
        """Add this attempt's failure to the message's error history, once a delivery."""
        if not self.failure_recorded:
            self.failure_recorded = True
            record_failure(message, exception, self.attempt)

    def decide(self, action: Action, **fields: Any) -> Decision:
        """Record the decision of this delivery and return it."""
        self.decision = Decision(action, self.attempt, **fields)
        return self.decision


def delivery(message: MessageProxy) -> Delivery:
    """The :class:`Delivery` of ``message``, made on first use.

    The attempt is read from ``message.options["retries"]`` then, before any
    middleware counts this attempt in it.
    """
    found: Delivery | None = message.__dict__.get(_ATTRIBUTE)
    if found is None:
        found = message.__dict__[_ATTRIBUTE] = Delivery(proxied(message))
    return found


def defer(
    broker: dramatiq.Broker,
    message: MessageProxy,
    delay: int,
    error: BaseException,
    *,
    counter: str,
    attempts: int = 3,
    outage: int = BROKER_OUTAGE,
) -> None:
    """Hold ``message`` back for ``delay`` ms without using an attempt, for ``error``
    (an open breaker, a spent retry budget): enqueue its copy, count the deferral in
    ``options[counter]``, and decide DEFERRED, or ENQUEUE_FAILED (the message failed,
    so dead-lettered) when the copy could not be enqueued (see
    :func:`~dramatiq_shared.middleware.messages.requeue`)."""
    options = message.options
    options[counter] = options.get(counter, 0) + 1
    enqueued = requeue(broker, message, delay, attempts=attempts, outage=outage)
    if enqueued:
        # Dramatiq's Results stores None for a skipped message, as if it had run: its
        # copy will run, and store the result, so this delivery stores none.
        options["store_results"] = False
    delivery(message).decide(
        Action.DEFERRED if enqueued else Action.ENQUEUE_FAILED,
        delay=delay,
        reason=str(error),
        error_type=qualified_name(type(error)),
    )


def seen(message: MessageProxy) -> bool:
    """Whether a middleware has asked for this message's delivery yet: a message the
    worker refused before processing it (``ActorNotFound``) has none."""
    return _ATTRIBUTE in message.__dict__


def refusal(message: MessageProxy) -> BaseException | None:
    """Why a middleware failed ``message`` before its actor ran, asked in
    ``after_skip_message``: the ``SkipMessage`` it raised (``DeathLimit``'s
    ``WorkerDiedError``, Dramatiq's ``AgeLimit``, a deferral that could not be enqueued),
    which Dramatiq's worker keeps on a failed message. None for a skipped message that
    was not failed: it runs again, or was never meant to run."""
    if not message.failed:
        return None
    kept: BaseException | None = getattr(message, "_exception", None)
    return kept or SkipMessage("failed before its actor ran")


def is_deferral(exception: BaseException) -> bool:
    """Whether ``exception`` asks to run the message later rather than reporting a failure:
    ``Defer`` or an open breaker inside the actor. (A worker's ``Shutdown`` is a failed
    attempt, as Dramatiq counts it.)"""
    return isinstance(exception, (Defer, CircuitOpenError))
