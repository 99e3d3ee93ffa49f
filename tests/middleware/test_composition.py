"""Groups, pipelines, results and group callbacks (``dramatiq.composition``) under the
whole suite: each message of a composition reports its own lifecycle once, retries keep
the composition's meaning, results and callbacks arrive as Dramatiq promises them. On a
RedisBroker with real worker threads, Dramatiq's ``Results`` on a Redis result backend
and ``GroupCallbacks`` on a Redis rate-limiter backend."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
from dramatiq.results import ResultFailure, Results, ResultTimeout
from dramatiq.results.backends import RedisBackend as ResultBackend

from dramatiq_shared import get_stack

from ..conftest import wait_until
from .conftest import dead_lettered, events, import_events

WAIT = 10_000


@pytest.fixture
def composing(suite: RedisBroker, redis_url: str) -> RedisBroker:
    suite.add_middleware(Results(backend=ResultBackend(url=redis_url)))
    suite.add_middleware(GroupCallbacks(RateLimiterBackend(url=redis_url)))
    return suite


@pytest.fixture
def settle(composing: RedisBroker) -> Iterator[Callable[[], None]]:
    """Start a worker; the function waits until it has finished all there is to do."""
    worker = dramatiq.Worker(composing, worker_timeout=50, worker_threads=4)
    worker.start()

    def wait() -> None:
        composing.join("default", timeout=WAIT)
        worker.join()

    yield wait
    worker.stop()


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
    composing: RedisBroker, settle: Callable[[], None]
) -> None:
    completion = get_stack(composing).completion
    completion.expect("imp-group", 3)
    runs = Runs()
    callbacks: list[str] = []

    @dramatiq.actor(broker=composing, store_results=True)
    def member(import_id: str, note_id: str, n: int) -> int:
        if runs(note_id) == 1 and note_id == "n-1":
            raise ConnectionError("blip")
        completion.mark_done(import_id, note_id)
        return n * 10

    @dramatiq.actor(broker=composing)
    def finished(import_id: str) -> None:
        callbacks.append(import_id)

    group = dramatiq.group([member.message("imp-group", f"n-{n}", n) for n in range(3)])
    group.add_completion_callback(finished.message("imp-group"))
    group.run()

    assert list(group.get_results(block=True, timeout=WAIT)) == [0, 10, 20]
    assert wait_until(lambda: callbacks, time.monotonic() + 10)
    settle()
    assert callbacks == ["imp-group"]
    assert runs.counts == {"n-0": 1, "n-1": 2, "n-2": 1}
    for note in ("n-0", "n-2"):
        assert events(composing, "imp-group", note) == [("PROCESSING", None), ("COMPLETED", None)]
    assert events(composing, "imp-group", "n-1") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
    streamed = get_stack(composing).broadcaster.transport.read("imp-group")
    assert [e["status"] for e in streamed if e["context"] == "finished"] == [
        "PROCESSING",
        "COMPLETED",
    ]
    ending = import_events(composing, "imp-group")
    assert [e for e in ending if e[0] != "PROCESSING"] == [("COMPLETED", 3, 3)]


def test_a_group_member_failing_for_good_says_so_and_its_callback_never_runs(
    composing: RedisBroker, settle: Callable[[], None]
) -> None:
    callbacks: list[str] = []

    @dramatiq.actor(broker=composing, store_results=True, max_attempts=2)
    def member(import_id: str, note_id: str) -> str:
        if note_id == "n-bad":
            raise ValueError("bad note")
        return note_id

    @dramatiq.actor(broker=composing)
    def finished(import_id: str) -> None:
        callbacks.append(import_id)

    group = dramatiq.group([member.message("imp-part", n) for n in ("n-ok", "n-bad")])
    group.add_completion_callback(finished.message("imp-part"))
    group.run()

    ok, bad = group.children
    assert ok.get_result(block=True, timeout=WAIT) == "n-ok"
    with pytest.raises(ResultFailure, match="bad note"):
        bad.get_result(block=True, timeout=WAIT)
    assert wait_until(lambda: dead_lettered(composing), time.monotonic() + 5)
    settle()
    assert callbacks == []
    assert events(composing, "imp-part", "n-ok") == [("PROCESSING", None), ("COMPLETED", None)]
    assert events(composing, "imp-part", "n-bad") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("FAILED", 2),
    ]


def test_a_pipeline_pipes_each_result_once_through_a_retried_step(
    composing: RedisBroker, settle: Callable[[], None]
) -> None:
    runs = Runs()

    @dramatiq.actor(broker=composing, store_results=True)
    def add(import_id: str, note_id: str, n: int, previous: int = 0) -> int:
        if runs(note_id) == 1 and note_id == "n-2":
            raise ConnectionError("blip")
        return previous + n

    pipe = dramatiq.pipeline([add.message("imp-pipe", f"n-{n}", n) for n in (1, 2, 3)])
    pipe.run()

    assert pipe.get_result(block=True, timeout=WAIT) == 6
    assert list(pipe.get_results(block=True, timeout=WAIT)) == [1, 3, 6]
    settle()
    assert runs.counts == {"n-1": 1, "n-2": 2, "n-3": 1}
    assert events(composing, "imp-pipe", "n-2") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
    for note in ("n-1", "n-3"):
        assert events(composing, "imp-pipe", note) == [("PROCESSING", None), ("COMPLETED", None)]


def test_a_pipeline_stops_at_a_step_that_fails_for_good(
    composing: RedisBroker, settle: Callable[[], None]
) -> None:
    runs = Runs()

    @dramatiq.actor(broker=composing, store_results=True, max_attempts=2)
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
    settle()
    with pytest.raises(ResultTimeout):
        last.get_result(block=True, timeout=200)
    assert runs.counts == {"n-1": 1, "n-2": 2}
    assert events(composing, "imp-stop", "n-2")[-1] == ("FAILED", 2)
    assert events(composing, "imp-stop", "n-3") == []


def test_a_message_held_back_by_an_open_breaker_stores_the_result_of_its_run(
    composing: RedisBroker, settle: Callable[[], None]
) -> None:
    @dramatiq.actor(broker=composing, store_results=True, breaker="svc")
    def lookup(import_id: str, n: int) -> int:
        return n * 2

    get_stack(composing).breakers.breakers["svc"].open()  # for its reset timeout, 300 ms
    message = lookup.send("imp-held", 21)

    # Held back, the delivery is skipped and its copy runs later: Results must not
    # store the skip's None as the message's result.
    assert message.get_result(block=True, timeout=WAIT) == 42
    settle()
    assert events(composing, "imp-held") == [
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
