"""The circuit breaker itself: pybreaker's surface over a state store.

See :mod:`dramatiq_shared.breakers`, which exports everything here.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pybreaker
import redis
from dramatiq.middleware.shutdown import Shutdown

from ..config import CircuitBreakerConfig
from ..errors import CircuitOpenError, ConfigError, Defer, PermanentError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..metrics import BREAKER_WINDOW
from .local import LocalState
from .redis_state import RedisState
from .state import BreakerState, Counts, Reply, StateUnavailableError

__all__ = ["SharedCircuitBreaker", "Ticket", "Verdict"]

_T = TypeVar("_T")

#: Milliseconds a caller is told to wait when the fallback is "open".
_FALLBACK_WAIT = 5_000
# Trial lease tokens: unique fleet-wide by a random prefix per process (a forked child
# draws its own), and cheaper than a uuid4 per call, which every call of a healthy
# breaker would pay for nothing.
_TOKEN_PREFIX = uuid.uuid4().hex
_tokens = itertools.count()


def _new_token_prefix() -> None:
    global _TOKEN_PREFIX  # noqa: PLW0603 - one per process
    _TOKEN_PREFIX = uuid.uuid4().hex


os.register_at_fork(after_in_child=_new_token_prefix)
_STATE_CLASSES: dict[str, Callable[..., pybreaker.CircuitBreakerState]] = {
    pybreaker.STATE_CLOSED: pybreaker.CircuitClosedState,
    pybreaker.STATE_OPEN: pybreaker.CircuitOpenState,
    pybreaker.STATE_HALF_OPEN: pybreaker.CircuitHalfOpenState,
}


@dataclass(frozen=True, slots=True)
class Ticket:
    """A permission to call, from :meth:`SharedCircuitBreaker.acquire`.

    ``trial`` holds the lease token when this call is the half-open trial;
    ``failures`` is the failure count the breaker had when the call was allowed;
    ``unrecorded`` is set when Redis could not be asked and the fallback let it through;
    ``started`` is when the call began (``time.monotonic()``), for a breaker that counts
    slow calls.
    """

    trial: str | None = None
    failures: int = 0
    unrecorded: bool = False
    started: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the breaker made of a finished call: its state after, and for how long it is open."""

    state: str
    remaining: int = 0

    @property
    def is_open(self) -> bool:
        return self.state == pybreaker.STATE_OPEN


#: What every call of a closed breaker without failures gets: made once, not per call.
_CLEAN_TICKET = Ticket()
_CLOSED = Verdict(pybreaker.STATE_CLOSED)


def _never_counts(error: BaseException) -> bool:
    # Bad input, deliberate deferrals and shutdowns say nothing about the service.
    return isinstance(error, (PermanentError, Defer, Shutdown, CircuitOpenError))


class SharedCircuitBreaker:
    """A circuit breaker whose state lives in Redis, moved by atomic scripts.

    Use it as pybreaker's: ``breaker.call(fn, ...)``, ``@breaker``, ``with
    breaker.calling():``, or simply ``with breaker:``. A refused call raises
    :class:`~dramatiq_shared.errors.CircuitOpenError` (with ``remaining`` milliseconds)
    rather than pybreaker's ``CircuitBreakerError``. Nested use in one thread (a
    breaker-guarded actor calling through the same breaker) is one call.

    Parameters:
      name: The breaker's name; breakers of one name share state across processes.
      config: Its settings.
      client: The Redis client holding the state; None keeps it in this process (an
        embedded run: its threads share it, other processes do not). Nothing is sent
        to Redis before the first call.
      namespace: Prefix of the Redis keys. Default ``"dramatiq_shared"``.
      listeners: pybreaker listeners, told of calls, failures, successes and transitions.
      fallback: ``"closed"`` or ``"open"``: how to behave while Redis is unreachable.
      state: The state store, instead of one made from ``client`` (which is then
        unused): :class:`Breakers` gives a cached one.

    Raises:
      ConfigError: When the fallback is neither.
    """

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig,
        client: redis.Redis | None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
        fallback: str = "closed",
        state: BreakerState | None = None,
    ) -> None:
        if fallback not in ("closed", "open"):
            raise ConfigError.invalid("fallback", fallback, "'closed' or 'open'")
        self.config = config
        self.fallback = fallback
        self._name = name
        self._listeners = list(listeners)
        if state is None:
            state = (
                LocalState(config)
                if client is None
                else RedisState(client, name, config, Keys(namespace))
            )
        self._state = state
        self._local = threading.local()
        self._rates = config.counts_rates
        slow = config.slow_call_duration
        self._slow_after = None if slow is None else slow / 1000

    # --- pybreaker's settings and introspection ---------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def fail_max(self) -> int:
        return self.config.failure_threshold

    @property
    def reset_timeout(self) -> float:
        """Seconds the breaker stays open before a trial, as pybreaker counts them."""
        return self.config.reset_timeout / 1000

    @property
    def success_threshold(self) -> int:
        return self.config.success_threshold

    @property
    def trial_timeout(self) -> int:
        return self.config.trial_timeout

    @property
    def current_state(self) -> str:
        """The shared state now; the fallback while Redis is unreachable."""
        try:
            return self._state.read().state
        except StateUnavailableError:
            return self.fallback

    @property
    def fail_counter(self) -> int:
        """Counted failures in a row; 0 while Redis is unreachable."""
        try:
            return self._state.read().failures
        except StateUnavailableError:
            return 0

    @property
    def window(self) -> Counts | None:
        """Counting rates: the calls in the shared window now, and the failed and slow
        ones among them (not yet those this process holds back, see
        :mod:`~dramatiq_shared.breakers.cache`); None otherwise, or while Redis is
        unreachable."""
        if not self._rates:
            return None
        try:
            snapshot = self._state.read()
        except StateUnavailableError:
            return None
        return Counts(snapshot.calls, snapshot.failures, snapshot.slow)

    @property
    def listeners(self) -> tuple[pybreaker.CircuitBreakerListener, ...]:
        return tuple(self._listeners)

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        self._listeners.remove(listener)

    def is_system_error(self, error: BaseException) -> bool:
        """Whether ``error`` counts as a failure: neither excluded nor one that never counts."""
        return not (self.config.is_excluded(error) or _never_counts(error))

    # --- the protocol: acquire, then one of record_success / record_failure / release ---

    def acquire(self) -> Ticket:
        """Ask to make a call.

        Returns:
          A ticket to hand back with the call's outcome.

        Raises:
          CircuitOpenError: When the breaker is open, or half-open with its one trial
            already running; ``remaining`` says how long to wait.
        """
        token = f"{_TOKEN_PREFIX}{next(_tokens)}"
        try:
            reply = self._state.acquire(token)
        except StateUnavailableError:
            if self.fallback == "open":
                raise CircuitOpenError(self.name, _FALLBACK_WAIT) from None
            return Ticket(unrecorded=True)
        self._moved(reply)
        if self._slow_after is not None:
            trial = token if reply.kind == "trial" else None
            if reply.kind in ("closed", "trial"):
                return Ticket(trial, reply.number, started=time.monotonic())
        elif reply.kind == "closed":
            return Ticket(failures=reply.number) if reply.number else _CLEAN_TICKET
        elif reply.kind == "trial":
            return Ticket(trial=token)
        self._tell("rejected")
        raise CircuitOpenError(self.name, reply.number)

    def record_success(self, ticket: Ticket) -> Verdict:
        """Report that the call succeeded; may close a half-open breaker.

        Returns:
          The breaker's state after the report.
        """
        self._tell("success")
        if ticket.unrecorded or (not self._rates and ticket.trial is None and ticket.failures == 0):
            return _CLOSED  # nothing to reset: no round trip
        return self._verdict(self._state.record_success, ticket)

    def record_failure(self, ticket: Ticket, error: BaseException) -> Verdict:
        """Report that the call failed with ``error``; counted unless it is excluded.

        An excluded error neither counts nor resets the count; a trial that ends in
        one gives its lease back so the next caller tries.

        Returns:
          The breaker's state after the report, with the time it stays open;
          ``Verdict("not counted")`` for an excluded error.
        """
        if not self.is_system_error(error):
            self.release(ticket)
            return Verdict("not counted")
        self._tell("failure", error)
        if ticket.unrecorded:
            return _CLOSED
        return self._verdict(self._state.record_failure, ticket)

    def release(self, ticket: Ticket) -> None:
        """Give back a trial lease without a verdict (the call was skipped or excluded)."""
        if ticket.trial is not None:
            with contextlib.suppress(StateUnavailableError):
                self._state.release(ticket.trial)

    def _verdict(self, record: Callable[..., Reply], ticket: Ticket) -> Verdict:
        slow = (
            self._slow_after is not None and time.monotonic() - ticket.started >= self._slow_after
        )
        try:
            reply = record(ticket.trial, slow=slow)
        except StateUnavailableError:
            return Verdict(self.fallback, _FALLBACK_WAIT if self.fallback == "open" else 0)
        self._moved(reply)
        if reply.window is not None:
            calls, failed, slow_calls = reply.window
            BREAKER_WINDOW.labels(self._name, "calls").set(calls)
            BREAKER_WINDOW.labels(self._name, "failure_rate").set(100 * failed / max(calls, 1))
            BREAKER_WINDOW.labels(self._name, "slow_call_rate").set(
                100 * slow_calls / max(calls, 1)
            )
        return Verdict(reply.kind, reply.number if reply.kind == pybreaker.STATE_OPEN else 0)

    # --- pybreaker's manual controls ---------------------------------------------------

    def open(self) -> bool:
        """Open the breaker for every process, for ``reset_timeout``.

        Returns:
          True, as pybreaker does when it raises on a trip.

        Raises:
          StateUnavailableError: When Redis cannot be reached.
        """
        self._moved(self._state.force(pybreaker.STATE_OPEN))
        return True

    def half_open(self) -> None:
        """Let the next caller of any process make a trial.

        Raises:
          StateUnavailableError: When Redis cannot be reached.
        """
        self._moved(self._state.force(pybreaker.STATE_HALF_OPEN))

    def close(self) -> None:
        """Close the breaker for every process, its counts reset.

        Raises:
          StateUnavailableError: When Redis cannot be reached.
        """
        self._moved(self._state.force(pybreaker.STATE_CLOSED))

    # --- pybreaker's ways of calling ------------------------------------------------

    def call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call ``func`` through the breaker; its exceptions propagate unchanged."""
        with self:
            self._tell("before_call", func, *args, **kwargs)
            return func(*args, **kwargs)

    def __call__(self, func: Callable[..., _T]) -> Callable[..., _T]:
        """Decorate ``func`` so that each call goes through the breaker."""

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> _T:
            return self.call(func, *args, **kwargs)

        return guarded

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """A context manager: the block is the call."""
        with self:
            yield

    def __enter__(self) -> SharedCircuitBreaker:
        stack = self._stack()
        stack.append(None if stack else self.acquire())
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        ticket = self._stack().pop()
        if ticket is None:
            return  # nested in a call through this breaker: the outer one reports
        if error is None:
            self.record_success(ticket)
        else:
            self.record_failure(ticket, error)

    def _stack(self) -> list[Ticket | None]:
        stack: list[Ticket | None] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    # --- listeners ---------------------------------------------------------------------

    def _tell(self, event: str, *args: Any, **kwargs: Any) -> None:
        # "rejected" is this library's addition: pybreaker's listeners lack it.
        for listener in self._listeners:
            method = getattr(listener, event, None)
            if method is not None:
                method(self, *args, **kwargs)

    def _moved(self, reply: Reply) -> None:
        if not reply.moved_from:
            return
        new = pybreaker.STATE_HALF_OPEN if reply.kind in ("trial", "busy") else reply.kind
        # Listeners get pybreaker's state objects, built with notify=False: they only
        # describe a transition the store has already made.
        cb = cast(Any, self)
        before = _STATE_CLASSES[reply.moved_from](cb, prev_state=None, notify=False)
        after = _STATE_CLASSES[new](cb, prev_state=before, notify=False)
        self._tell("state_change", before, after)
