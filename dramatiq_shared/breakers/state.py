"""What a circuit breaker's state store does, whichever holds it.

:class:`~dramatiq_shared.breakers.SharedCircuitBreaker` decides nothing itself: every
transition is one call to a :class:`BreakerState`, which applies it atomically and
answers with a :class:`Reply`. Two stores implement it: Redis (shared by every process,
:mod:`dramatiq_shared.breakers.redis_state`) and this process's memory (embedded runs,
:mod:`dramatiq_shared.breakers.local`). A store that caches another (answering a closed
breaker's ``acquire`` from a view kept fresh by pub/sub) implements it too, and the
breaker cannot tell the difference.

Replies are data, so one table of cases tests every store (``tests/breakers/test_state.py``).
``Reply.number`` means, by ``kind``:

==============  ===================================================================
``closed``      the failures counted so far: in a row, or in the window
``open``        milliseconds until a trial is let through
``half-open``   0: the trial is running or a caller may take it
``trial``       0: (acquire only) the caller holds the half-open trial lease
``busy``        (acquire only) milliseconds to wait while another caller's trial runs
==============  ===================================================================

``Reply.moved_from`` is the state the operation moved the breaker out of, or ``""``
when it stayed: the breaker tells its listeners of exactly these transitions.
``Reply.window`` is, for a breaker that counts rates, what its window holds after a
recorded outcome (:mod:`~dramatiq_shared.breakers.window`); None otherwise.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

__all__ = ["BreakerState", "Counts", "Reply", "Snapshot", "StateUnavailableError"]


class Counts(NamedTuple):
    """The calls a window holds, and how many of them failed or were slow."""

    calls: int = 0
    failed: int = 0
    slow: int = 0


class Reply(NamedTuple):
    """A state store's answer to one operation (see the module's table)."""

    kind: str
    number: int = 0
    moved_from: str = ""
    window: Counts | None = None


class Snapshot(NamedTuple):
    """A breaker's state as read, for introspection."""

    state: str
    failures: int = 0
    successes: int = 0
    remaining: int = 0
    #: Counting rates: the calls in the window and the slow ones among them.
    calls: int = 0
    slow: int = 0


class StateUnavailableError(ConnectionError):
    """The store holding a breaker's state cannot be reached; the breaker falls back."""


class BreakerState(Protocol):
    """One breaker's state and its transitions, each applied atomically.

    ``token`` identifies a caller's half-open trial lease; only the holder's outcome
    moves a half-open breaker. ``slow`` tells a breaker that counts slow calls that the
    call took ``slow_call_duration`` or longer. Every method may raise
    :class:`StateUnavailableError`.
    """

    def acquire(self, token: str) -> Reply:
        """Ask to call: ``closed`` or ``trial`` let it through, ``open`` or ``busy`` refuse."""

    def record_failure(self, token: str | None, *, slow: bool = False) -> Reply:
        """Count a failure: opens at the threshold, or re-opens when it ends the trial."""

    def record_success(self, token: str | None, *, slow: bool = False) -> Reply:
        """Reset the failures (or count a success in the window), or count a successful
        trial, closing at the threshold."""

    def release(self, token: str) -> None:
        """Give the trial lease back unjudged, so the next caller takes the trial."""

    def read(self) -> Snapshot:
        """The state now, without moving it."""

    def force(self, state: str) -> Reply:
        """Move to ``state`` whatever the counts (manual open, close, half-open)."""
