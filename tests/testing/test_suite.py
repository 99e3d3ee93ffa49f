"""The kit itself: what it surfaces, what it records, and what it puts back."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import QueueJoinTimeout
from dramatiq.middleware import AsyncIO

from dramatiq_shared import ConfigError, get_stack, setup_broker
from dramatiq_shared.errors import ActorFailedError
from dramatiq_shared.keys import DEFAULT_NAMESPACE
from dramatiq_shared.testing import Suite

USER_TEST = """
import dramatiq

def test_an_import(dramatiq_suite):
    @dramatiq.actor(max_attempts=2, base_delay=10)
    def parse_note(import_id):
        raise KeyError("title")

    parse_note.send("imp-1")
    dramatiq_suite.run()
"""


def test_an_unexpected_failure_fails_the_users_test_naming_the_actor_and_the_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "dramatiq_shared.testing", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *ActorFailedError: actor 'parse_note' failed: KeyError: 'title'"
            " (message *, attempt 2 of 2, exhausted: all 2 attempts failed)",
        ]
    )
    result.stdout.fnmatch_lines(['*raise KeyError("title")*'])  # the actor's own traceback


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    with Suite(database=f"sqlite:///{tmp_path / 'kit.db'}") as suite:
        yield suite


def test_without_fail_fast_failures_are_the_tests_and_are_not_raised_later(suite: Suite) -> None:
    @dramatiq.actor(max_attempts=1)
    def broken() -> None:
        raise RuntimeError("no")

    broken.send()
    suite.run(fail_fast=False)
    broken.send()
    with pytest.raises(ActorFailedError, match="actor 'broken' failed: RuntimeError: no") as raised:
        suite.run()
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert [f.actor for f in suite.failures] == ["broken", "broken"]
    suite.run()  # both were reported: nothing to raise


def test_a_long_backoff_is_shortened_and_the_chosen_delay_kept(suite: Suite) -> None:
    runs: list[float] = []

    @dramatiq.actor(max_attempts=3, base_delay=60_000, max_delay=120_000, jitter="none")
    def slow_service() -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise TimeoutError("no answer")

    slow_service.send()
    suite.run(timeout=10)
    assert [(d.action, d.delay) for d in suite.decisions] == [
        ("retry", 60_000),
        ("retry", 120_000),
        ("succeeded", None),
    ]
    assert runs[-1] - runs[0] < 5  # three minutes of backoff, not waited out


def test_a_run_that_does_not_end_raises_dramatiqs_join_timeout(suite: Suite) -> None:
    @dramatiq.actor
    def sleepy() -> None:
        time.sleep(1)

    sleepy.send()
    with pytest.raises(QueueJoinTimeout):
        suite.run(timeout=0.2)


def test_a_dependency_fails_as_often_as_told_and_is_put_back(tmp_path: Path) -> None:
    with Suite(database=f"sqlite:///{tmp_path / 'kit.db'}") as suite:
        fault = suite.fail("os.path.basename", times=2, error=OSError("disk gone"))
        for _ in range(2):
            with pytest.raises(OSError, match="disk gone"):
                __import__("os").path.basename("/a/b")
        assert __import__("os").path.basename("/a/b") == "b"
        assert (fault.calls, fault.failures) == (3, 2)
        with pytest.raises(ConfigError, match="target must be the dotted path"):
            suite.fail("os.path.no_such_function", times=1)
    assert __import__("os").path.basename is not fault


def test_actors_of_the_apps_broker_run_under_its_settings_and_go_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    app = setup_broker(
        StubBroker(),
        database=f"sqlite:///{tmp_path / 'app.db'}",
        retry={"maxAttempts": 2, "baseDelay": 50},
        breakers={"svc": {"failureThreshold": 7}},
    )

    @dramatiq.actor
    def job() -> None:
        raise ValueError("always")

    try:
        with Suite(database=f"sqlite:///{tmp_path / 'kit.db'}") as suite:
            assert job.broker is suite.broker is dramatiq.get_broker()
            assert suite.breaker("svc").fail_max == 7
            job.send()
            suite.run(fail_fast=False)
            assert [(d.action, d.attempt) for d in suite.decisions] == [
                ("retry", 1),
                ("exhausted", 2),
            ]
        assert job.broker is app
        assert dramatiq.get_broker() is app
    finally:
        get_stack(app).broadcaster.close()


def test_on_redis_the_suite_streams_events_and_shares_breakers(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    with Suite(database=f"sqlite:///{tmp_path / 'kit.db'}", redis_url=redis_url) as suite:

        @dramatiq.actor(breaker="svc")
        def step(import_id: str) -> None:
            pass

        suite.open_breaker("svc")
        suite.close_breaker("svc")
        step.send("imp-1")
        suite.run()
        assert [e.status for e in suite.events("imp-1")] == ["PROCESSING", "COMPLETED"]
        assert [(t.breaker, t.old, t.new) for t in suite.transitions] == [
            ("svc", "closed", "open"),
            ("svc", "open", "closed"),
        ]
        # Under the suite's own prefix, which a test reads its keys by.
        assert suite.keys.namespace != DEFAULT_NAMESPACE
        assert redis_client.exists(suite.keys.status("imp-1"))
    assert not redis_client.exists(suite.keys.status("imp-1"))  # deleted on close


def test_more_middleware_are_in_place_before_the_worker_starts_after_the_suites(
    tmp_path: Path,
) -> None:
    loop = AsyncIO()  # its event loop starts as the worker boots, or async actors fail
    with Suite(database=f"sqlite:///{tmp_path / 'kit.db'}", middleware=[loop]) as suite:

        @dramatiq.actor
        async def waits(import_id: str) -> None:
            await asyncio.sleep(0)

        waits.send("imp-async")
        suite.run()
        assert [d.action for d in suite.decisions] == ["succeeded"]
        order = suite.broker.middleware
        assert order.index(loop) > max(order.index(m) for m in suite.stack.middleware)


def test_paused_holds_the_worker_until_the_block_ends(suite: Suite) -> None:
    ran: list[str] = []

    @dramatiq.actor
    def held(name: str) -> None:
        ran.append(name)

    with suite.paused():
        held.send("held")
        time.sleep(0.2)  # ten of the worker's waits for a message
        assert ran == []
    suite.run()
    assert ran == ["held"]

    def declare_while_paused() -> None:
        with suite.paused():

            @dramatiq.actor(queue_name="late")
            def late() -> None:
                pass

    with pytest.raises(RuntimeError, match=re.escape("queue(s) late, late.DQ declared while")):
        declare_while_paused()


def test_an_event_carries_its_metadata(suite: Suite) -> None:
    runs: list[str] = []

    @dramatiq.actor(max_attempts=2)
    def blips_once(import_id: str) -> None:
        runs.append(import_id)
        if len(runs) == 1:
            raise ConnectionError("blip")

    blips_once.send("imp-meta")
    suite.run()
    processing, retrying, *_ = suite.events("imp-meta")
    assert processing.metadata == {}
    assert (retrying.status, retrying.attempt) == ("RETRYING", 1)
    assert retrying.metadata["error_type"] == "ConnectionError"
    assert retrying.metadata["max_attempts"] == 2
