"""The exception hierarchy of dramatiq_shared.

Everything the library raises on purpose derives from :class:`DramatiqSharedError`,
so ``except DramatiqSharedError`` catches the library's own errors and nothing else.
Actors raise :class:`PermanentError`, :class:`TransientError` and :class:`Defer`
to tell the retry middleware what to do with a failure.
"""

from __future__ import annotations

from typing import Any, TypeVar

import dramatiq
from dramatiq.middleware import MiddlewareError, SkipMessage

__all__ = [
    "ActorFailedError",
    "AuthError",
    "CircuitOpenError",
    "ConfigError",
    "Defer",
    "DramatiqSharedError",
    "PermanentError",
    "RetryBudgetExhaustedError",
    "ServerError",
    "TransientError",
    "ValidationError",
    "WorkerDiedError",
]

_E = TypeVar("_E", bound="_InvalidValueError")


class DramatiqSharedError(Exception):
    """Base class of every error dramatiq_shared raises on purpose."""


class PermanentError(DramatiqSharedError):
    """A failure that no retry can fix: the message is never retried."""


class TransientError(DramatiqSharedError):
    """A failure worth retrying: always retryable, within ``max_attempts``."""


class _InvalidValueError(DramatiqSharedError, ValueError):
    """A value refused because of what it is, naming the field it came from.

    Parameters:
      message: The whole message shown to the user.
      field: The name of the offending field, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def invalid(cls: type[_E], field: str, value: Any, allowed: str) -> _E:
        """Build the error for one bad field value.

        Parameters:
          field: The field's name, as the user wrote it.
          value: The value that was refused.
          allowed: What the field accepts, phrased to follow "must be".

        Returns:
          An error whose message reads ``"<field> must be <allowed>, got <value>"``.
        """
        return cls(f"{field} must be {allowed}, got {_shorten(value)}", field=field)


class ConfigError(_InvalidValueError, MiddlewareError):
    """A configuration value was refused; raised at construction, never mid-message.

    It is also a Dramatiq ``MiddlewareError``: Dramatiq logs and swallows any other
    exception a middleware hook raises, but lets these through, so a bad actor option
    stops ``@dramatiq.actor`` and a conflicting middleware stops the worker's boot.
    """


class ValidationError(_InvalidValueError, PermanentError):
    """Input data was refused. Bad input stays bad, so it is also a :class:`PermanentError`."""


class MessageTooLargeError(ValidationError, MiddlewareError):
    """A message is larger than ``max_message_size``.

    A Dramatiq ``MiddlewareError`` too, so ``send()`` raises it rather than Dramatiq
    logging it away; on a worker it fails the message at once, as any ValidationError.
    """


class ServerError(DramatiqSharedError):
    """A server that a setting names refused the connection or did not answer.

    Raised by the checks of :mod:`dramatiq_shared.servers` before a process starts its
    work, never from a middleware hook.

    Parameters:
      message: The whole message: the setting, the URL with its password hidden, the cause.
      setting: What named the server: a variable (``REDIS_URL``) or an option
        (``--database``).
    """

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class AuthError(DramatiqSharedError):
    """A token was refused.

    Parameters:
      code: What was wrong, for clients to act on: ``"unauthorized"`` (missing,
        malformed or forged), ``"expired"``, or ``"forbidden"`` (valid, but for
        another import).
      message: Words for people.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CircuitOpenError(DramatiqSharedError):
    """A call was refused because the named circuit breaker is open.

    Parameters:
      breaker: The breaker's name.
      remaining: Milliseconds until the breaker lets a trial call through.
    """

    def __init__(self, breaker: str, remaining: int) -> None:
        super().__init__(f"circuit breaker {breaker!r} is open for another {remaining} ms")
        self.breaker = breaker
        self.remaining = remaining


class RetryBudgetExhaustedError(DramatiqSharedError, SkipMessage):
    """A retry was refused because its retry budget has none left (see
    :class:`~dramatiq_shared.middleware.RetryBudget`): the fleet has retried as much as
    the budget allows over its window.

    A ``SkipMessage`` too, raised in ``before_process_message``: the retry is skipped
    (deferred, or failed first when the budget dead-letters refused retries), as
    Dramatiq skips a message past ``AgeLimit``.

    Parameters:
      budget: The budget's name.
      retries: Retries counted in the budget's window.
      allowance: Retries the window allows (``ratio`` x successes + ``minimum`` x seconds).
      wait: Milliseconds until the oldest counted retry leaves the window.
    """

    def __init__(self, budget: str, retries: int, allowance: float, wait: int) -> None:
        super().__init__(
            f"retry budget {budget!r} exhausted: {retries} retries in its window, which"
            f" allows {allowance:.1f}"
        )
        self.budget = budget
        self.retries = retries
        self.allowance = allowance
        self.wait = wait


class Defer(DramatiqSharedError, dramatiq.Retry):  # noqa: N818 - an instruction, like Retry
    """Raised by an actor to run the message again later without consuming an attempt.

    It is a ``dramatiq.Retry`` too, so Dramatiq's worker does not log it as an
    unhandled error; the :class:`~dramatiq_shared.middleware.Retry` middleware bounds
    how often one message may defer (``max_defers``).

    Parameters:
      delay: Milliseconds to wait before the message runs again; an int >= 0.
      reason: Why the work is deferred, shown in logs and status events.

    Raises:
      ValidationError: When ``delay`` is not an int >= 0.
    """

    def __init__(self, delay: int, reason: str = "deferred") -> None:
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ValidationError.invalid("delay", delay, "an int >= 0 (milliseconds)")
        super().__init__(f"{reason} for {delay} ms")
        self.delay: int = delay
        self.reason = reason


class WorkerDiedError(PermanentError, SkipMessage):
    """A message was refused because worker processes died running it, ``deliveries``
    times in a row, without an outcome (see :class:`~dramatiq_shared.middleware.DeathLimit`).

    It is a ``SkipMessage`` too: raised in ``before_process_message`` after the message
    is failed, Dramatiq's worker skips the actor and nacks the message, whichever retry
    middleware is installed, as it does for a message past ``AgeLimit``.

    Parameters:
      deliveries: Deliveries of the message whose worker died before an outcome.
      worker: The last worker process that had it, ``host:pid`` ("" when unknown).
      started_at: When that worker took it (ISO 8601, UTC; "" when unknown).
    """

    def __init__(self, deliveries: int, worker: str, started_at: str) -> None:
        last = f", the last on {worker} at {started_at}" if worker else ""
        super().__init__(
            f"worker died while processing it: {deliveries} deliveries without an outcome{last}"
        )
        self.deliveries = deliveries
        self.worker = worker
        self.started_at = started_at


class ActorFailedError(DramatiqSharedError, AssertionError):
    """A message failed for good while a test ran the suite
    (:meth:`dramatiq_shared.testing.Suite.run`).

    An ``AssertionError`` too, so pytest reports the test as failed, not as broken. The
    actor's own exception is its ``__cause__``, and its traceback is shown below it.

    Parameters:
      actor: The name of the actor whose message failed.
      error: What it raised (or what failed it before it ran).
      detail: The message id, the attempt and the decision, in words.
      others: How many more messages failed for good in the same run.
    """

    def __init__(self, actor: str, error: BaseException, detail: str, others: int = 0) -> None:
        more = f"; {others} more message(s) failed too, see suite.failures" if others else ""
        super().__init__(
            f"actor {actor!r} failed: {type(error).__name__}: {error} ({detail}){more}"
        )
        self.actor = actor
        self.error = error


def _shorten(value: Any, limit: int = 80) -> str:
    """Return ``repr(value)``, cut to ``limit`` characters so huge inputs keep messages short."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
