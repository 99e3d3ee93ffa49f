"""The whole suite on a broker of one test's own: :class:`Suite`.

A test's actors are usually declared once, when their module is imported, on the
broker that module's ``setup_broker()`` call made. A :class:`Suite` gives each test a
fresh broker instead (a StubBroker, or a RedisBroker under key prefixes of its own),
installs the suite on it with that module's settings, SQLite in a file of the test's,
and moves the declared actors onto it until it closes; then everything is put back.

Delays are shortened, not the clock: a retry, a deferral or a ``send_with_options(delay=)``
waits at most ``max_wait`` milliseconds, while the decision the test reads keeps the
delay that was chosen. Circuit breakers keep real time: give them a short
``reset_timeout``, or force them with :meth:`Suite.open_breaker` and
:meth:`Suite.close_breaker`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import Middleware
from loguru import logger

from .._checks import check_int
from ..breakers import SharedCircuitBreaker
from ..config import StatusConfig
from ..errors import ActorFailedError, ConfigError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..middleware import DeathLimit, ErrorHandling
from ..middleware.messages import ack_set
from ..stack import Stack, get_stack, setup_broker
from ..status.broadcaster import get_broadcaster, set_broadcaster
from ..stores.dead_letters import DeadLetterRecord
from ..workers import MessageCounts
from .recorders import (
    ErrorRecord,
    ErrorRecords,
    Event,
    Failure,
    Outcomes,
    RecordedDecision,
    Transition,
    Transitions,
)

__all__ = ["Fault", "Suite"]

#: Milliseconds a worker thread waits for a message before it looks again.
_WORKER_TIMEOUT = 20


class Fault:
    """A dependency made to fail its first ``times`` calls, then to work as before.

    Made by :meth:`Suite.fail`, which puts it in place of the dependency.

    Parameters:
      target: The dotted path it replaces, for messages.
      original: The dependency itself, called once the failures are used up.
      times: How many calls fail.
      error: The exception raised, or its class (made with a message naming the call).
    """

    def __init__(
        self,
        target: str,
        original: Callable[..., Any],
        *,
        times: int,
        error: BaseException | type[BaseException],
    ) -> None:
        self.target = target
        self.original = original
        self.times = times
        self.error = error
        #: Calls made so far, failed or not.
        self.calls = 0
        #: Calls that failed.
        self.failures = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            failing = self.failures < self.times
            if failing:
                self.failures += 1
                number = self.failures
        if not failing:
            return self.original(*args, **kwargs)
        if isinstance(self.error, BaseException):
            raise self.error
        raise self.error(
            f"{self.target} failed (dramatiq_shared.testing: failure {number} of {self.times})"
        )


class Suite:
    """The whole suite (:func:`~dramatiq_shared.setup_broker`) on a broker of its own, a
    worker, and what the test reads back; :meth:`close` (or ``with``) puts all back.

    Settings are those of the broker set up before (your actor module's
    ``setup_broker()`` call: retry, breakers, status, ``max_message_size``,
    ``max_deaths``), then ``options``; status events are all kept
    (``broadcast_interval=0``) unless ``options`` gives ``status``. Other middleware of
    that broker (``AsyncIO``, ``Results``, ``CurrentMessage``...) are added as they are.
    ErrorHandling's records are taken by a loguru handler of the suite's own, which a
    ``configure_logging()`` call during the test removes, as it removes every handler.

    Parameters:
      database: The database URL, such as ``sqlite:///<tmp_path>/suite.db``.
      redis_url: Run on a RedisBroker at this URL, and keep breakers, status streams and
        completion there, under key prefixes of this suite's own, deleted on close. None
        (the default) runs on a StubBroker with everything in this process, and hides
        ``REDIS_URL`` from the code under test meanwhile.
      options: More arguments of :func:`~dramatiq_shared.setup_broker`, over the
        inherited ones.
      middleware: More middleware of the broker (``AsyncIO``, ``Results``...), added
        before the worker starts, as those of the broker set up before are: after the
        suite's own. Default none.
      worker_threads: Threads of the worker. Default 4.
      max_wait: Longest wait, in milliseconds, of a delayed message. Default 10.

    Raises:
      ConfigError: When an argument is invalid.
    """

    def __init__(
        self,
        *,
        database: str,
        redis_url: str | None = None,
        options: Mapping[str, Any] | None = None,
        middleware: Sequence[Middleware] = (),
        worker_threads: int = 4,
        max_wait: int = 10,
    ) -> None:
        check_int("worker_threads", worker_threads, minimum=1, error=ConfigError)
        self.max_wait = check_int("max_wait", max_wait, minimum=0, error=ConfigError)
        self._outcomes = Outcomes()
        self._errors = ErrorRecords()
        self._transitions = Transitions()
        self._reported = 0
        self._patches = pytest.MonkeyPatch()
        self._cleanup = contextlib.ExitStack()
        try:
            self._start(database, redis_url, dict(options or {}), [*middleware], worker_threads)
        except BaseException:
            self._cleanup.close()
            raise

    def _start(
        self,
        database: str,
        redis_url: str | None,
        options: dict[str, Any],
        middleware: list[Middleware],
        threads: int,
    ) -> None:
        previous = dramatiq.broker.global_broker
        self._cleanup.callback(_restore_globals, previous, _current_broadcaster())
        self._cleanup.callback(self._patches.undo)
        settings = {**_inherited(previous), **options}
        if redis_url is None:
            self._patches.delenv("REDIS_URL", raising=False)
            broker: dramatiq.Broker = StubBroker()
        else:
            token = uuid.uuid4().hex[:12]
            settings["namespace"] = f"dramatiq_shared_test_{token}"
            broker = RedisBroker(url=redis_url, namespace=f"dramatiq_test_{token}")  # type: ignore[no-untyped-call]
            self._cleanup.callback(_forget, redis_url, settings["namespace"], broker.namespace)
        for extra in [*_carried(previous, broker), *middleware]:
            broker.add_middleware(extra)
        broker.emit_after("process_boot")
        setup_broker(broker, database=database, redis_url=redis_url, **settings)
        self.broker = broker
        #: The layout of the suite's Redis keys (breakers, status streams, death counts).
        self.keys = Keys(settings.get("namespace", DEFAULT_NAMESPACE))
        self.stack: Stack = get_stack(broker)
        self._cleanup.callback(_close_stack, self.stack)
        broker.add_middleware(self._outcomes)
        self.stack.breakers.breakers.add_listener(self._transitions)
        sink = logger.add(self._errors, level=0, filter=ErrorRecords.wanted, format="{message}")
        self._cleanup.callback(_remove_sink, sink)
        self._shorten_delays(broker)
        if previous is not None:
            self._adopt(previous, broker)
        self.worker = dramatiq.Worker(
            broker, worker_timeout=_WORKER_TIMEOUT, worker_threads=threads
        )
        self.worker.start()
        self._cleanup.callback(self.worker.stop)

    def _shorten_delays(self, broker: dramatiq.Broker) -> None:
        enqueue = broker.enqueue

        def shortened(message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
            return enqueue(message, delay=None if delay is None else min(delay, self.max_wait))

        broker.enqueue = shortened  # type: ignore[method-assign]

    def _adopt(self, previous: dramatiq.Broker, broker: dramatiq.Broker) -> None:
        """Move the actors declared on ``previous`` onto ``broker`` until close."""
        actors = list(previous.actors.values())
        for actor in actors:
            actor.broker = broker
            broker.declare_actor(actor)

        def give_back() -> None:
            for actor in actors:
                actor.broker = previous

        self._cleanup.callback(give_back)

    # --- running ------------------------------------------------------------------------

    def run(self, *, timeout: float = 30.0, fail_fast: bool = True) -> None:
        """Wait until every queue is empty and the worker idle, retries and deferrals
        included, as Dramatiq's ``broker.join(queue, fail_fast=True)`` and
        ``worker.join()`` do for one queue.

        Parameters:
          timeout: Seconds to wait at most. Default 30.
          fail_fast: Raise for the first message that failed for good since the last
            run. False leaves the failures to the test (:attr:`failures`); a later run
            does not raise them either. Default True.

        Raises:
          ActorFailedError: With ``fail_fast``, when a message failed for good: it names
            the actor and its error, which is its ``__cause__``.
          QueueJoinTimeout: When work was still going on after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        queues = sorted(self.broker.get_declared_queues() - self.broker.get_declared_delay_queues())
        while True:
            for queue in queues:
                self._join(queue, deadline)
            self.worker.join()
            if self._idle(queues):
                break
        failures = self._outcomes.failures[self._reported :]
        self._reported += len(failures)
        if fail_fast and failures:
            first = failures[0]
            raise ActorFailedError(
                first.actor, first.error, first.detail(), len(failures) - 1
            ) from first.error

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the worker for the block: nothing is fetched or run in it, so the test
        can enqueue messages and set up what they will meet (a count in Redis, a row)
        before the worker sees them; it works again as the block ends.

        Declare the actors before the block: a queue declared in it would be consumed
        at once (Dramatiq starts its consumer unpaused).

        Raises:
          RuntimeError: As the block ends, when a queue was declared in it.
        """
        queues = self.broker.get_declared_queues()
        self.worker.pause()
        try:
            yield
        finally:
            self.worker.resume()
        declared = self.broker.get_declared_queues() - queues
        if declared:
            raise RuntimeError(
                f"queue(s) {', '.join(sorted(declared))} declared while the worker was"
                " paused were consumed all along: declare their actors before paused()"
            )

    def _join(self, queue: str, deadline: float) -> None:
        remaining = round((deadline - time.monotonic()) * 1000)
        if remaining <= 0:
            raise QueueJoinTimeout(queue)  # type: ignore[no-untyped-call]
        if isinstance(self.broker, StubBroker):
            self.broker.join(queue, timeout=remaining, fail_fast=False)
        elif isinstance(self.broker, RedisBroker):
            self.broker.join(queue, timeout=remaining, interval=_WORKER_TIMEOUT)

    def _idle(self, queues: list[str]) -> bool:
        if isinstance(self.broker, StubBroker):
            return all(q.unfinished_tasks == 0 for q in self.broker.queues.values())
        assert isinstance(self.broker, RedisBroker)
        client = self.broker.client
        # A message the consumer fetched but has yet to hand to a worker thread is in
        # neither the queue nor the worker's count: only in the broker's ack set.
        return all(
            self.broker.do_qsize(queue) == 0
            and not client.scard(ack_set(self.broker, queue))
            and not client.scard(ack_set(self.broker, dq_name(queue)))
            for queue in queues
        )

    # --- what the test reads back ----------------------------------------------------

    @property
    def decisions(self) -> list[RecordedDecision]:
        """What was decided about each delivery, in the order the deliveries started."""
        return list(self._outcomes.decisions)

    @property
    def failures(self) -> list[Failure]:
        """The messages that failed for good, in order."""
        return list(self._outcomes.failures)

    @property
    def errors(self) -> list[ErrorRecord]:
        """ErrorHandling's records of failed deliveries, in order."""
        return list(self._errors.records)

    @property
    def transitions(self) -> list[Transition]:
        """Every transition of a circuit breaker, in order."""
        return list(self._transitions.transitions)

    @property
    def dead_letters(self) -> list[DeadLetterRecord]:
        """The dead-letters table, newest first."""
        store = next(m.dead_letters for m in self.stack.middleware if isinstance(m, ErrorHandling))
        return store.list(limit=10_000, include_retried=True) if store is not None else []

    def events(self, import_id: str, *, note_id: str | None = None) -> list[Event]:
        """The status events of ``import_id`` (of ``note_id`` only, when given), in order,
        once everything published so far is sent.

        Raises:
          TimeoutError: When the broadcaster could not send them within 10 s.
        """
        broadcaster = self.stack.broadcaster
        if not broadcaster.flush():
            raise TimeoutError("status events were not all sent within 10 s")
        events: list[Event] = []
        while page := broadcaster.transport.read(import_id, after=events[-1].id if events else 0):
            events += map(Event.from_wire, page)
        return [e for e in events if note_id is None or e.note_id == note_id]

    # --- steering -------------------------------------------------------------------------

    def breaker(self, name: str) -> SharedCircuitBreaker:
        """The stack's circuit breaker ``name``, the one actors run under."""
        return self.stack.breakers.breakers[name]

    def open_breaker(self, name: str) -> None:
        """Open breaker ``name`` for its ``reset_timeout``."""
        self.breaker(name).open()

    def close_breaker(self, name: str) -> None:
        """Close breaker ``name``, its counts reset."""
        self.breaker(name).close()

    def fail(
        self,
        target: str,
        *,
        times: int,
        error: BaseException | type[BaseException] = ConnectionError,
    ) -> Fault:
        """Make the dependency at the dotted path ``target`` (``"myapp.nutrition.fetch"``)
        fail its next ``times`` calls, then work; put back on close.

        Name it where the actor looks it up: an actor module that did ``from
        myapp.nutrition import fetch`` calls ``myapp.actors.fetch``.

        Parameters:
          target: ``module.attribute`` (``module.Class.method`` too).
          times: Calls that fail; an int >= 0.
          error: The exception raised, or its class. Default ``ConnectionError``.

        Returns:
          The :class:`Fault` now in place, which counts the calls.

        Raises:
          ConfigError: When ``target`` names nothing, or ``times`` is not an int >= 0.
        """
        check_int("times", times, minimum=0, error=ConfigError)
        owner, name = _resolve(target)
        fault = Fault(target, getattr(owner, name), times=times, error=error)
        self._patches.setattr(owner, name, fault)
        return fault

    def close(self) -> None:
        """Stop the worker, close the stack, and put back what the suite changed."""
        self._cleanup.close()

    def __enter__(self) -> Suite:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _inherited(broker: dramatiq.Broker | None) -> dict[str, Any]:
    """The ``setup_broker()`` arguments that set ``broker`` up, as far as they matter to
    a test; status events all kept."""
    try:
        stack = get_stack(broker) if broker is not None else None
    except ConfigError:  # a broker without the suite
        stack = None
    if stack is None:
        return {"status": StatusConfig(broadcast_interval=0)}
    settings: dict[str, Any] = {
        "retry": stack.retry.config,
        "breakers": stack.breakers.breakers.configs,
        "status": dataclasses.replace(stack.broadcaster.config, broadcast_interval=0),
    }
    for middleware in stack.middleware:
        if isinstance(middleware, ErrorHandling):
            settings["max_message_size"] = middleware.max_message_size
        elif isinstance(middleware, DeathLimit):
            settings["max_deaths"] = middleware.max_deaths
    return settings


def _carried(previous: dramatiq.Broker | None, broker: dramatiq.Broker) -> list[Any]:
    """The middleware of ``previous`` that are neither the suite's nor of a kind
    ``broker`` has already (Dramatiq's defaults)."""
    if previous is None:
        return []
    try:
        suite = set(map(id, get_stack(previous).middleware))
    except ConfigError:
        suite = set()
    present = {type(m) for m in broker.middleware}
    return [
        m
        for m in previous.middleware
        if id(m) not in suite
        and type(m) not in present
        and not isinstance(m, MessageCounts)
        and type(m).__module__ != "dramatiq.worker"  # a worker's own, not the broker's
    ]


def _resolve(target: str) -> tuple[Any, str]:
    """The object holding the attribute ``target`` names, and the attribute's name."""
    path, _, name = target.rpartition(".")
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        try:
            for part in parts[end:]:
                owner = getattr(owner, part)
        except AttributeError:
            break
        if name and hasattr(owner, name):
            return owner, name
        break
    raise ConfigError.invalid("target", target, "the dotted path of a module's attribute")


def _remove_sink(sink: int) -> None:
    # Gone already when the code under test called configure_logging(), which removes
    # every loguru handler.
    with contextlib.suppress(ValueError):
        logger.remove(sink)


def _current_broadcaster() -> Any:
    try:
        return get_broadcaster()
    except ConfigError:
        return None


def _restore_globals(broker: dramatiq.Broker | None, broadcaster: Any) -> None:
    dramatiq.broker.global_broker = broker
    set_broadcaster(broadcaster)


def _close_stack(stack: Stack) -> None:
    stack.broadcaster.close()
    stack.breakers.breakers.close()
    if stack.retry_budget is not None:
        stack.retry_budget.budgets.close()
    stack.broker.close()
    stack.database.close()
    if stack.redis is not None:
        stack.redis.close()


def _forget(url: str, *namespaces: str) -> None:
    """Delete every key under ``namespaces`` (the suite's and the broker's)."""
    with redis.Redis.from_url(url) as client:
        for namespace in namespaces:
            keys = list(client.scan_iter(match=f"{namespace}:*", count=1_000))
            for start in range(0, len(keys), 1_000):
                client.unlink(*keys[start : start + 1_000])
