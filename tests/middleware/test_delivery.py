"""The Delivery the middleware share, and each middleware alone and in every pair.

The pair runs check that the middleware meet only through the Delivery: whichever are
installed, a message that succeeds, one that fails once and one that fails for good
end as they should, and each installed middleware does its part (breaker, status
events, retry decisions, log records and dead letters). Both on the StubBroker and on
a RedisBroker with real worker threads.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage, Middleware, Retries
from dramatiq.middleware.shutdown import Shutdown
from loguru import logger

from dramatiq_shared import (
    Broadcaster,
    CircuitBreakerConfig,
    CircuitOpenError,
    Defer,
    MemoryTransport,
    RetryConfig,
    StatusConfig,
)
from dramatiq_shared.db import create_tables, init_database
from dramatiq_shared.middleware import CircuitBreaker, ErrorHandling, Retry, StatusBroadcast
from dramatiq_shared.middleware.delivery import Action, Decision, delivery, is_deferral, seen
from dramatiq_shared.stores import DeadLetterStore

from .conftest import dead_lettered

NAMES = ("breaker", "status", "retry", "errors")
COMBINATIONS = [(name,) for name in NAMES] + list(itertools.combinations(NAMES, 2))


def proxy(broker: dramatiq.Broker, **options: Any) -> MessageProxy:
    return MessageProxy(dramatiq.Message("default", "fine", (), {}, options))


def test_a_delivery_belongs_to_one_proxy_and_reads_its_attempt_once(
    stub_broker: dramatiq.Broker,
) -> None:
    first = proxy(stub_broker, retries=2)
    assert not seen(first)
    current = delivery(first)
    assert seen(first)
    assert delivery(first) is current
    assert current.attempt == 3
    first.options["retries"] = 3  # counted by the retry layer: the delivery keeps its attempt
    assert delivery(first).attempt == 3
    # The same message delivered again (a redelivery) is another delivery.
    again = MessageProxy(first._message)
    assert delivery(again) is not current


def test_a_failure_enters_the_error_history_once_per_delivery(
    stub_broker: dramatiq.Broker,
) -> None:
    message = proxy(stub_broker)
    current = delivery(message)
    current.record_failure(message, ValueError("bad"))
    current.record_failure(message, ValueError("bad"))
    assert message.options["error_count"] == 1
    assert [entry["attempt"] for entry in message.options["error_history"]] == [1]


def test_actions_say_whether_the_message_runs_again_and_whether_it_used_an_attempt() -> None:
    again = {action for action in Action if action.runs_again}
    assert again == {Action.RETRY, Action.DEFERRED}
    used = {action for action in Action if action.used_attempt}
    assert used == {Action.RETRY, Action.EXHAUSTED, Action.NOT_RETRYABLE, Action.ENQUEUE_FAILED}
    decision = Decision(Action.RETRY, 1, max_attempts=3, delay=10, reason="r", error_type="E")
    assert decision.as_dict() == {
        "action": "retry",
        "attempt": 1,
        "max_attempts": 3,
        "delay": 10,
        "reason": "r",
        "error_type": "E",
    }
    with pytest.raises(AttributeError):
        decision.delay = 5  # type: ignore[misc]


def test_deferrals_are_the_exceptions_that_ask_to_run_later() -> None:
    assert is_deferral(Defer(10))
    assert is_deferral(CircuitOpenError("svc", 10))
    assert not is_deferral(Shutdown())  # an attempt, as Dramatiq counts it
    assert not is_deferral(RuntimeError("boom"))


class Runs:
    """How often each actor ran, and the options of its last run."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last_options: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> int:
        message = CurrentMessage.get_current_message()
        with self._lock:
            self.counts[name] += 1
            self.last_options[name] = dict(message.options) if message else {}
            return self.counts[name]


@pytest.fixture
def records() -> Iterator[list[Any]]:
    collected: list[Any] = []
    handler = logger.add(collected.append, level="INFO", format="{message}")
    yield collected
    logger.remove(handler)


def install(broker: dramatiq.Broker, names: tuple[str, ...], tmp_path: Path) -> dict[str, Any]:
    """Put the named middleware where Dramatiq's Retries is, in setup_broker's order.

    Without our Retry, Dramatiq's own Retries stays in its place, with short backoffs.
    """
    made: dict[str, Any] = {}
    stack: list[Middleware] = []
    if "breaker" in names:
        configs = {"svc": CircuitBreakerConfig(failure_threshold=1, reset_timeout=200)}
        made["breaker"] = CircuitBreaker(local=True, breakers=configs, jitter=0)
        stack.append(made["breaker"])
    if "status" in names:
        transport = MemoryTransport()
        made["transport"] = transport
        made["broadcaster"] = Broadcaster(transport, config=StatusConfig(broadcast_interval=0))
        stack.append(StatusBroadcast(broadcaster=made["broadcaster"]))
    if "retry" in names:
        made["retry"] = Retry(config=RetryConfig(base_delay=10, max_delay=20), seed=1)
        stack.append(made["retry"])
    else:
        stack.append(Retries(min_backoff=10, max_backoff=20))
    if "errors" in names:
        database = init_database(f"sqlite:///{tmp_path / 'dead.db'}")
        create_tables(database)
        made["errors"] = ErrorHandling(database=database)
        stack.append(made["errors"])
    position = next(n for n, m in enumerate(broker.middleware) if isinstance(m, Retries))
    broker.middleware[position : position + 1] = stack
    for middleware in stack:
        broker.actor_options |= middleware.actor_options
    broker.add_middleware(CurrentMessage())
    return made


@pytest.mark.parametrize("names", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_each_middleware_alone_and_in_every_pair(
    broker: dramatiq.Broker,
    run_worker: Any,
    names: tuple[str, ...],
    tmp_path: Path,
    records: list[Any],
) -> None:
    made = install(broker, names, tmp_path)
    runs = Runs()
    guarded = {"breaker": "svc"} if "breaker" in names else {}

    @dramatiq.actor(broker=broker, max_retries=1)
    def fine(import_id: str) -> None:
        runs("fine")

    @dramatiq.actor(broker=broker, max_retries=1, **guarded)
    def flaky(import_id: str) -> None:
        if runs("flaky") == 1:
            raise ConnectionError("blip")

    @dramatiq.actor(broker=broker, max_retries=1)
    def broken(import_id: str) -> None:
        runs("broken")
        raise RuntimeError("always")

    for actor in (fine, flaky, broken):
        actor.send(actor.actor_name)
    try:
        run_worker()
    finally:
        if "broadcaster" in made:
            made["broadcaster"].close()

    # Whatever is installed: a success runs once, a failure runs twice (one retry), and
    # only the message that failed for good is in the broker's dead-letter queue.
    assert runs.counts == {"fine": 1, "flaky": 2, "broken": 2}
    assert [m["actor_name"] for m in dead_lettered(broker)] == ["broken"]

    if "breaker" in names:
        # flaky's failure opened its breaker (threshold 1); the retry waited for it and
        # the trial's success closed it again: the ticket reached the breaker both times.
        assert made["breaker"].breakers["svc"].current_state == "closed"
        options = runs.last_options["flaky"]
        if "retry" in names:  # the open breaker, not the message, was at fault
            assert options.get("retries", 0) == 0
        else:  # Dramatiq's retry came too early and was held back by the breaker
            assert options.get("breaker_deferrals", 0) >= 1
    if "status" in names:
        transport = made["transport"]
        statuses = {
            import_id: [e["status"] for e in transport.read(import_id)]
            for import_id in ("fine", "flaky", "broken")
        }
        assert statuses["fine"] == ["PROCESSING", "COMPLETED"]
        assert statuses["flaky"][0] == "PROCESSING"
        assert statuses["flaky"][-2:] == ["PROCESSING", "COMPLETED"]
        assert "RETRYING" in statuses["flaky"]
        assert statuses["broken"] == ["PROCESSING", "RETRYING", "PROCESSING", "FAILED"]
    if "retry" in names:
        actions = Counter({(a, actor): n for (a, actor, _), n in made["retry"].counts().items()})
        expected = Counter({("retry", "broken"): 1, ("exhausted", "broken"): 1})
        expected["deferred" if "breaker" in names else "retry", "flaky"] = 1
        assert actions == expected
    if "errors" in names:
        failed = [r.record for r in records if r.record["message"] == "Action execution failed"]
        outcomes = sorted((r["extra"]["actor"], r["extra"]["will_retry"]) for r in failed)
        flaky_logged = [] if {"breaker", "retry"} <= set(names) else [("flaky", True)]
        assert outcomes == sorted([("broken", False), ("broken", True), *flaky_logged])
        store: DeadLetterStore = made["errors"].dead_letters
        letters = store.list()
        assert [letter.actor_name for letter in letters] == ["broken"]
        assert [entry["attempt"] for entry in letters[0].error_history] == [1, 2]
