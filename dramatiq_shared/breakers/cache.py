"""A process-local view in front of the Redis state: a closed breaker costs no round trip.

:class:`CachedState` answers ``acquire`` of a breaker it knows to be closed without
asking Redis, and skips the reset a success would make of a breaker it knows has no
failures. Everything else (every failure report, the reset after a failure, every call
of a breaker that is open or half-open, the trial lease) goes to the
:class:`~dramatiq_shared.breakers.redis_state.RedisState` behind it, so the guarantees of the
Lua scripts hold as before: the breaker opens exactly once at its threshold, and one
half-open trial runs fleet-wide.

What the view knows comes from Redis's own replies: a reply ``closed`` marks the breaker
closed, with the number of failures it counted. The scripts publish on
``Keys.breaker_changes`` the breaker's name at every transition, and its name and
``1`` at a closed breaker's first failure. A :class:`View`'s subscriber thread then
forgets the breaker after a transition (the next call asks Redis), and after a first
failure knows it closed with failures. A reply is kept only if no message about its
breaker arrived while it was on its way, so a stale reply cannot overwrite a newer
change. While the subscriber is not connected (not started yet, or Redis lost), the
view knows nothing and every call asks Redis, which is also how an outage reaches the
breaker's fallback.

So a failure costs its own report and, in each process, the one success that resets
the count (the successes that finish while that reset is on its way skip theirs): not
a round trip for every call until the next success, nor one for every success.
A process whose view says closed lets calls through until the message of a transition
arrives (a few milliseconds; the tests require under 50): the price of not asking.

A breaker that counts rates needs every outcome in its window, successes included. Its
successes (fast, not a trial's) wait in the process and go to Redis together, in one
script call with the next outcome that could move the breaker (a failure, a slow call,
a trial), or once 200 are waiting, or at the first success a second or more after the
oldest waiting one: a success reaches the fleet's window at most that late. A failure
is never held back, so the breaker opens as soon as the failure that brings a rate to
its threshold is reported.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref

import redis

from .._redis import RETRY_AFTER, text
from ..keys import Keys
from .redis_state import RedisState
from .state import Reply, Snapshot
from .window import outcome

__all__ = ["CachedState", "View"]

_CLEAN = Reply("closed", 0)
#: Seconds the subscriber waits for a message before checking it should still run.
_POLL = 1.0
#: Counting rates: most successes held back, and most seconds the oldest is held.
FLUSH_CALLS = 200
FLUSH_AFTER = 1.0


class View:
    """Which breakers of one Redis are closed, and their failures, as this process last learnt.

    Parameters:
      client: The Redis client; the subscriber opens a pub/sub connection of its pool.
      keys: The key layout, for the changes channel. Default ``Keys()``.
    """

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self._client = client
        self._channel = (keys or Keys()).breaker_changes
        self._lock = threading.Lock()
        self._closed: dict[str, int] = {}  # closed breakers: failures counted
        self._epochs: dict[str, int] = {}  # messages seen per breaker
        self._generation = 0  # subscriptions made: a new one forgets what was missed
        self._listening = False
        self._started = False
        self._stopped = threading.Event()
        # A forked child has no subscriber thread: it starts its own at first use. Told
        # by the fork itself, not by comparing pids on every call.
        os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))

    def failures(self, name: str) -> int | None:
        """The failures ``name`` counts if it is known to be closed, else None; starts
        the subscriber."""
        if not self._started:
            self._start()
        return self._closed.get(name) if self._listening else None

    def since(self, name: str) -> tuple[int, int]:
        """A mark for ``name`` to take before asking Redis, for :meth:`learn`."""
        with self._lock:
            return self._generation, self._epochs.get(name, 0)

    def learn(self, name: str, mark: tuple[int, int], reply: Reply) -> None:
        """Keep what ``reply`` says of ``name``, unless the breaker changed since ``mark``."""
        with self._lock:
            if reply.kind != "closed":
                self._closed.pop(name, None)
            elif self._listening and mark == (self._generation, self._epochs.get(name, 0)):
                self._closed[name] = reply.number

    def stop(self) -> None:
        """Stop the subscriber; the view then knows nothing."""
        self._stopped.set()
        self._forget(listening=False)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._listening = False
            self._closed.clear()
        threading.Thread(target=self._subscribe, name="breaker-changes", daemon=True).start()

    def _forget(self, *, listening: bool) -> None:
        with self._lock:
            self._closed.clear()
            self._generation += 1
            self._listening = listening

    def _subscribe(self) -> None:
        while not self._stopped.is_set():
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            try:
                pubsub.subscribe(self._channel)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=_POLL)
                    if message is not None:
                        self._receive(message)
            except Exception:
                # Not only RedisError: redis-py raises TypeError from a socket closed
                # under it. Messages may be lost from here on: know nothing until
                # subscribed again. The outage is logged by the state the calls go to.
                self._forget(listening=False)
                self._stopped.wait(RETRY_AFTER)
            finally:
                pubsub.close()

    def _receive(self, message: dict[str, object]) -> None:
        if message["type"] == "subscribe":
            self._forget(listening=True)  # from now on no change goes unnoticed
        elif message["type"] == "message":
            name, _, failures = text(message["data"]).partition(" ")  # type: ignore[arg-type]
            with self._lock:
                if failures:  # a closed breaker's first failure
                    self._closed[name] = int(failures)
                else:
                    self._closed.pop(name, None)
                self._epochs[name] = self._epochs.get(name, 0) + 1


def _forked(ref: weakref.ref[View]) -> None:
    view = ref()
    if view is not None:
        # The parent's threads are gone, and one may have held the lock at the fork.
        view._lock = threading.Lock()
        view._started = view._listening = False


class CachedState:
    """A breaker's :class:`RedisState`, what a closed breaker answers taken from a view.

    Parameters:
      name: The breaker's name.
      inner: Its state in Redis.
      view: The view of the breakers of that Redis.
    """

    def __init__(self, name: str, inner: RedisState, view: View) -> None:
        self._name = name
        self._inner = inner
        self._view = view
        self._resetting: tuple[int, int] | None = None  # the view's mark at the last reset
        self._rates = inner.counts_rates
        self._lock = threading.Lock()
        self._waiting = 0  # counting rates: successes not yet sent
        self._waiting_since = 0.0

    def acquire(self, token: str) -> Reply:
        failures = self._view.failures(self._name)
        if failures is not None:
            return _CLEAN if failures == 0 else Reply("closed", failures)
        mark = self._view.since(self._name)
        return self._learnt(mark, self._inner.acquire(token))

    def record_failure(self, token: str | None, *, slow: bool = False) -> Reply:
        if self._rates:
            return self._record(outcome(failed=True, slow=slow), token)
        mark = self._view.since(self._name)
        return self._learnt(mark, self._inner.record_failure(token))

    def record_success(self, token: str | None, *, slow: bool = False) -> Reply:
        if self._rates:
            return self._record(outcome(failed=False, slow=slow), token)
        mark = self._view.since(self._name)
        if token is None:
            # The count is 0 already, or another call's reset, made since the last
            # failure this process heard of, makes it 0: nothing for this one to do.
            if self._view.failures(self._name) == 0 or self._resetting == mark:
                return _CLEAN
            self._resetting = mark
        try:
            reply = self._inner.record_success(token)
        except BaseException:
            self._resetting = None  # not reset after all: the next success tries
            raise
        return self._learnt(mark, reply)

    def release(self, token: str) -> None:
        self._inner.release(token)

    def read(self) -> Snapshot:
        return self._inner.read()

    def force(self, state: str) -> Reply:
        mark = self._view.since(self._name)
        return self._learnt(mark, self._inner.force(state))

    def _record(self, code: str, token: str | None) -> Reply:
        with self._lock:
            if code == "s" and token is None:
                now = time.monotonic()
                if not self._waiting:
                    self._waiting_since = now
                self._waiting += 1
                if self._waiting < FLUSH_CALLS and now - self._waiting_since < FLUSH_AFTER:
                    return _CLEAN
                code = ""  # this success is among those waiting
            outcomes = "s" * self._waiting + code
            self._waiting = 0
        # Successes sent when Redis is unreachable are lost: the window misses them.
        mark = self._view.since(self._name)
        return self._learnt(mark, self._inner.record(outcomes, token))

    def _learnt(self, mark: tuple[int, int], reply: Reply) -> Reply:
        self._view.learn(self._name, mark, reply)
        return reply
