"""Groups, pipelines, results and group callbacks (``dramatiq.composition``) under the
whole suite: each message of a composition reports its own lifecycle once, retries keep
the composition's meaning, results and callbacks arrive as Dramatiq promises them. On a
RedisBroker with real worker threads, Dramatiq's ``Results`` on a Redis result backend
and ``GroupCallbacks`` on a Redis rate-limiter backend."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import GroupCallbacks, Middleware
from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
from dramatiq.results import ResultFailure, Results, ResultTimeout
from dramatiq.results.backends import RedisBackend as ResultBackend

from dramatiq_shared.errors import ActorFailedError
from dramatiq_shared.testing import Suite

from .conftest import dead_lettered, events, import_events

WAIT = 10_000


@pytest.fixture
def suite_middleware(redis_url: str) -> list[Middleware]:
    return [
        Results(backend=ResultBackend(url=redis_url)),
        GroupCallbacks(RateLimiterBackend(url=redis_url)),
    ]


class Runs:
    """How often each note's message ran, thread-safely."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, note_id: str) -> int:
        with self._lock:
            self.counts[note_id] += 1
            return self.counts[note_id]


def test_each_member_of_a_group_reports_once_and_its_callback_runs_once(
    suite: Suite,
) -> None:
    completion = suite.stack.completion
    completion.expect("imp-group", 3)
    runs = Runs()
    callbacks: list[str] = []

    @dramatiq.actor(broker=suite.broker, store_results=True)
    def member(import_id: str, note_id: str, n: int) -> int:
        if runs(note_id) == 1 and note_id == "n-1":
            raise ConnectionError("blip")
        completion.mark_done(import_id, note_id)
        return n * 10

    @dramatiq.actor(broker=suite.broker)
    def finished(import_id: str) -> None:
        callbacks.append(import_id)

    group = dramatiq.group([member.message("imp-group", f"n-{n}", n) for n in range(3)])
    group.add_completion_callback(finished.message("imp-group"))
    group.run()

    assert list(group.get_results(block=True, timeout=WAIT)) == [0, 10, 20]
    suite.run()  # the callback too: the last member is unacked until it is enqueued
    assert callbacks == ["imp-group"]
    assert runs.counts == {"n-0": 1, "n-1": 2, "n-2": 1}
    for note in ("n-0", "n-2"):
        assert events(suite, "imp-group", note) == [("PROCESSING", None), ("COMPLETED", None)]
    assert events(suite, "imp-group", "n-1") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
    assert [e.status for e in suite.events("imp-group") if e.context == "finished"] == [
        "PROCESSING",
        "COMPLETED",
    ]
    ending = import_events(suite, "imp-group")
    assert [e for e in ending if e[0] != "PROCESSING"] == [("COMPLETED", 3, 3)]


def test_a_group_member_failing_for_good_says_so_and_its_callback_never_runs(
    suite: Suite,
) -> None:
    callbacks: list[str] = []

    @dramatiq.actor(broker=suite.broker, store_results=True, max_attempts=2)
    def member(import_id: str, note_id: str) -> str:
        if note_id == "n-bad":
            raise ValueError("bad note")
        return note_id

    @dramatiq.actor(broker=suite.broker)
    def finished(import_id: str) -> None:
        callbacks.append(import_id)

    group = dramatiq.group([member.message("imp-part", n) for n in ("n-ok", "n-bad")])
    group.add_completion_callback(finished.message("imp-part"))
    group.run()

    ok, bad = group.children
    assert ok.get_result(block=True, timeout=WAIT) == "n-ok"
    with pytest.raises(ResultFailure, match="bad note"):
        bad.get_result(block=True, timeout=WAIT)
    with pytest.raises(ActorFailedError, match="actor 'member' failed: ValueError: bad note"):
        suite.run()
    assert [m["message_id"] for m in dead_lettered(suite.broker)] == [bad.message_id]
    assert callbacks == []
    assert events(suite, "imp-part", "n-ok") == [("PROCESSING", None), ("COMPLETED", None)]
    assert events(suite, "imp-part", "n-bad") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("FAILED", 2),
    ]


def test_a_pipeline_pipes_each_result_once_through_a_retried_step(
    suite: Suite,
) -> None:
    runs = Runs()

    @dramatiq.actor(broker=suite.broker, store_results=True)
    def add(import_id: str, note_id: str, n: int, previous: int = 0) -> int:
        if runs(note_id) == 1 and note_id == "n-2":
            raise ConnectionError("blip")
        return previous + n

    pipe = dramatiq.pipeline([add.message("imp-pipe", f"n-{n}", n) for n in (1, 2, 3)])
    pipe.run()

    assert pipe.get_result(block=True, timeout=WAIT) == 6
    assert list(pipe.get_results(block=True, timeout=WAIT)) == [1, 3, 6]
    suite.run()
    assert runs.counts == {"n-1": 1, "n-2": 2, "n-3": 1}
    assert events(suite, "imp-pipe", "n-2") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
    for note in ("n-1", "n-3"):
        assert events(suite, "imp-pipe", note) == [("PROCESSING", None), ("COMPLETED", None)]


def test_a_pipeline_stops_at_a_step_that_fails_for_good(
    suite: Suite,
) -> None:
    runs = Runs()

    @dramatiq.actor(broker=suite.broker, store_results=True, max_attempts=2)
    def step(import_id: str, note_id: str, previous: Any = None) -> str:
        runs(note_id)
        if note_id == "n-2":
            raise ValueError("cannot parse")
        return note_id

    pipe = dramatiq.pipeline([step.message("imp-stop", f"n-{n}") for n in (1, 2, 3)])
    pipe.run()

    first, failing, last = pipe.messages
    assert first.get_result(block=True, timeout=WAIT) == "n-1"
    with pytest.raises(ResultFailure, match="cannot parse"):
        failing.get_result(block=True, timeout=WAIT)
    with pytest.raises(ActorFailedError, match="actor 'step' failed: ValueError: cannot parse"):
        suite.run()
    with pytest.raises(ResultTimeout):
        last.get_result(block=True, timeout=200)
    assert runs.counts == {"n-1": 1, "n-2": 2}
    assert events(suite, "imp-stop", "n-2")[-1] == ("FAILED", 2)
    assert events(suite, "imp-stop", "n-3") == []


def test_a_message_held_back_by_an_open_breaker_stores_the_result_of_its_run(
    suite: Suite,
) -> None:
    @dramatiq.actor(broker=suite.broker, store_results=True, breaker="svc")
    def lookup(import_id: str, n: int) -> int:
        return n * 2

    suite.open_breaker("svc")  # for its reset timeout, 300 ms
    message = lookup.send("imp-held", 21)

    # Held back, the delivery is skipped and its copy runs later: Results must not
    # store the skip's None as the message's result.
    assert message.get_result(block=True, timeout=WAIT) == 42
    suite.run()
    assert events(suite, "imp-held") == [
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
