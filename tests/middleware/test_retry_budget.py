"""RetryBudget: a retry the budget refuses never calls the service; deferred without using
an attempt, or dead-lettered; shown as such in decisions, status events and metrics. On
a StubBroker (the in-process budget) and a RedisBroker (the Redis one) with real worker
threads; and the fleet-wide cap on two ``dramatiq`` worker processes, during an outage of
the service, with the benchmark's driver (``benchmarks/retry_budget.py``)."""

from __future__ import annotations

import importlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from prometheus_client import REGISTRY

from dramatiq_shared import ConfigError, RetryBudget, get_stack, setup_broker
from dramatiq_shared.middleware.delivery import Action
from dramatiq_shared.testing import Suite

ERROR_TYPE = "dramatiq_shared.errors.RetryBudgetExhaustedError"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


class Calls:
    """Each call's (message id, retries), thread-safely."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self) -> int:
        """Record the current message's call; return how many calls it has had."""
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        assert message is not None
        with self._lock:
            self.seen.append((message.message_id, message.options.get("retries", 0)))
            return sum(1 for seen, _ in self.seen if seen == message.message_id)


def budget_suite(
    request: pytest.FixtureRequest, tmp_path: Path, budget: dict[str, Any]
) -> Iterator[Suite]:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    if redis_url is not None:
        request.getfixturevalue("redis_client")  # a flushed database
    # Not the settings and actors of a broker an earlier test left as Dramatiq's global.
    request.getfixturevalue("monkeypatch").setattr(dramatiq.broker, "global_broker", None)
    with Suite(
        database=f"sqlite:///{tmp_path / 'suite.db'}",
        redis_url=redis_url,
        options={
            "retry": {"maxAttempts": 3, "baseDelay": 10, "maxDelay": 20, "budget": budget},
            "status": {"broadcastInterval": 0},
        },
        middleware=[dramatiq.middleware.CurrentMessage()],
        max_wait=2_000,  # a refused retry waits for the window, as chosen
    ) as kit:
        yield kit


# Two retries a second whatever the successes (ratio 0): a burst of five is refused thrice.
DEFER = {"ratio": 0, "minimum": 2, "window": 1_000}


@pytest.fixture(params=["stub", "redis"])
def deferring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Suite]:
    yield from budget_suite(request, tmp_path, DEFER)


@pytest.fixture(params=["stub", "redis"])
def dead_lettering(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Suite]:
    yield from budget_suite(request, tmp_path, {**DEFER, "whenRefused": "dead_letter"})


def refused(budget: str) -> float:
    return (
        REGISTRY.get_sample_value("dramatiq_shared_retry_budget_refused_total", {"budget": budget})
        or 0.0
    )


def test_a_refused_retry_is_deferred_without_calling_the_service_or_using_an_attempt(
    deferring: Suite,
) -> None:
    calls = Calls()
    before = refused("flaky")

    @dramatiq.actor(broker=deferring.broker)
    def flaky(import_id: str, n: int) -> None:
        if calls() == 1:
            raise ConnectionError("service down")

    for n in range(5):
        flaky.send("imp-budget", n)
    deferring.run(timeout=30)

    retries = Counter(retries for _, retries in calls.seen)
    # Five first attempts and five retries: no refused retry reached the actor, and
    # each message succeeded on its second attempt, the deferrals using none.
    assert retries == {0: 5, 1: 5}
    deferrals = [d for d in deferring.decisions if d.error_type == ERROR_TYPE]
    assert len(deferrals) >= 3  # at most two retries a second: three of the five waited
    assert {d.action for d in deferrals} == {Action.DEFERRED}
    assert all(d.attempt == 2 for d in deferrals)
    assert all("retry budget 'flaky' exhausted" in d.reason for d in deferrals)
    assert all(d.delay is not None and d.delay >= 1 for d in deferrals)
    assert refused("flaky") - before == len(deferrals)
    tokens = REGISTRY.get_sample_value("dramatiq_shared_retry_budget_tokens", {"budget": "flaky"})
    assert tokens is not None
    assert 0 <= tokens <= 2  # as the last spend saw it: at most the minimum's two
    retrying = [
        e for e in deferring.events("imp-budget") if e.metadata.get("error_type") == ERROR_TYPE
    ]
    assert len(retrying) == len(deferrals)
    assert {e.status for e in retrying} == {"RETRYING"}
    assert all("retry budget 'flaky' exhausted" in e.metadata["reason"] for e in retrying)


def test_a_refused_retry_is_dead_lettered_with_its_reason_when_so_configured(
    dead_lettering: Suite,
) -> None:
    calls = Calls()
    exhausted: list[dict[str, Any]] = []

    @dramatiq.actor(broker=dead_lettering.broker)
    def told(message: dict[str, Any], info: dict[str, Any]) -> None:
        exhausted.append(info)

    @dramatiq.actor(broker=dead_lettering.broker, retry_budget="svc", on_retry_exhausted="told")
    def down(import_id: str, n: int) -> None:
        calls()
        raise ConnectionError("service down")

    for n in range(5):
        down.send("imp-dead", n)
    dead_lettering.run(timeout=30, fail_fast=False)

    # Two retries ran; the other three were refused before they called the service.
    retried = [retries for _, retries in calls.seen if retries]
    assert len(retried) <= 2 + 2  # a later retry of the two, if the window had moved
    budget_failures = [f for f in dead_lettering.failures if "retry budget 'svc'" in str(f.error)]
    assert len(budget_failures) >= 3
    for failure in budget_failures:
        assert failure.decision is not None
        assert failure.decision.action is Action.EXHAUSTED
        assert failure.decision.error_type == ERROR_TYPE
    assert len(dead_lettering.failures) == 5  # every message failed for good, once
    assert len(exhausted) == 5
    assert sum(info["error_type"] == ERROR_TYPE for info in exhausted) == len(budget_failures)
    rows = [r for r in dead_lettering.dead_letters if "retry budget 'svc'" in r.error_message]
    assert len(rows) == len(budget_failures)
    failed = [
        e
        for e in dead_lettering.events("imp-dead")
        if e.status == "FAILED" and e.metadata.get("error_type") == ERROR_TYPE
    ]
    assert len(failed) == len(budget_failures)
    assert all("retry budget 'svc' exhausted" in e.metadata["error_message"] for e in failed)


def test_a_retry_sent_back_by_a_deferral_after_it_ran_is_not_charged_again(
    deferring: Suite,
) -> None:
    calls = Calls()
    stack = get_stack(deferring.broker)
    assert stack.retry_budget is not None

    @dramatiq.actor(broker=deferring.broker, max_defers=5)
    def once(import_id: str) -> None:
        number = calls()
        if number == 1:
            raise ConnectionError("blip")
        if number == 2:
            from dramatiq_shared import Defer  # noqa: PLC0415 - read as the actor's step

            raise Defer(10, "not yet")

    once.send("imp-once")
    deferring.run(timeout=30)
    assert [retries for _, retries in calls.seen] == [0, 1, 1]
    # One retry charged: the window's count says so.
    reply = stack.retry_budget.budgets["once"].read()
    assert reply.retries == 1


def test_the_budget_is_named_by_the_option_else_the_breaker_else_the_actor(
    deferring: Suite,
) -> None:
    budget = get_stack(deferring.broker).retry_budget
    assert budget is not None

    @dramatiq.actor(broker=deferring.broker, retry_budget="shared", breaker="api")
    def named() -> None: ...

    @dramatiq.actor(broker=deferring.broker, breaker="api")
    def guarded() -> None: ...

    @dramatiq.actor(broker=deferring.broker)
    def plain() -> None: ...

    assert budget._names == {**budget._names, "named": "shared", "guarded": "api", "plain": "plain"}


def test_a_bad_budget_name_is_refused_when_the_actor_is_declared(deferring: Suite) -> None:
    with pytest.raises(ConfigError, match="actor 'bad': retry_budget must be a name of 1 to 100"):

        @dramatiq.actor(broker=deferring.broker, retry_budget="two words")
        def bad() -> None: ...


def test_without_a_budget_the_stack_has_no_retry_budget(tmp_path: Path) -> None:
    broker = dramatiq.brokers.stub.StubBroker()
    setup_broker(broker, database=f"sqlite:///{tmp_path / 'x.db'}", retry={"maxAttempts": 2})
    stack = get_stack(broker)
    try:
        assert stack.retry_budget is None
        assert not any(isinstance(m, RetryBudget) for m in broker.middleware)
    finally:
        stack.broadcaster.close()


def test_it_needs_redis_unless_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="RetryBudget keeps its state in Redis"):
        RetryBudget()
    assert RetryBudget(local=True).budgets["x"].read().allowance == 100


def test_the_stack_puts_the_budget_after_the_breakers_and_before_status(tmp_path: Path) -> None:
    broker = dramatiq.brokers.stub.StubBroker()
    setup_broker(
        broker,
        database=f"sqlite:///{tmp_path / 'x.db'}",
        retry={"budget": {"ratio": 0.2}},
    )
    stack = get_stack(broker)
    try:
        names = [type(m).__name__ for m in stack.middleware]
        assert names[:4] == ["CircuitBreaker", "RetryBudget", "StatusBroadcast", "Retry"]
        assert stack.retry_budget is not None
        assert stack.retry_budget.config.ratio == 0.2
    finally:
        stack.broadcaster.close()


@pytest.mark.usefixtures("redis_client")  # a flushed database
def test_two_worker_processes_retry_no_more_than_the_budget_allows_during_an_outage(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("retry_budget")
    # The service fails every call for one window (2 s) in the middle of a 5 s stream.
    budget = {"ratio": 0.1, "minimum": 5, "window": 2_000}
    run = {"messages": 500, "rate": 100.0, "outage": 2.0, "drain": 5.0}
    capped = bench.measure(redis_url, budget=budget, **run)
    free = bench.measure(redis_url, budget=None, **run)
    print(f"with the budget: {capped}\nwithout: {free}")
    # Over one window the fleet retried at most ratio x successes + minimum x seconds ...
    assert capped.bound == pytest.approx(0.1 * capped.successes_before_end + 5 * 2)
    assert capped.retries_in_outage <= capped.bound
    # ... where without a budget the same outage drew more retries than that.
    assert free.retries_in_outage > capped.bound
    assert capped.first_in_outage > capped.bound  # the messages did fail: first attempts
    # Refused retries were deferred, not lost nor dead-lettered.
    assert capped.dead_lettered == 0
    assert capped.completed + capped.pending == run["messages"]
