"""``async def`` actors under the whole suite: Dramatiq's ``AsyncIO`` middleware runs them
on its event-loop thread while the middleware hooks run on the worker thread. Retries,
breakers, status events, completion, error records and dead letters behave as for
sync actors; on a RedisBroker with real worker threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import dramatiq
import pytest
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware
from loguru import logger

from dramatiq_shared import add_status_event_and_broadcast_async
from dramatiq_shared.errors import ActorFailedError
from dramatiq_shared.testing import Suite

from .conftest import dead_lettered, events, import_events


@pytest.fixture
def suite_middleware() -> list[Middleware]:
    return [AsyncIO()]


def test_an_async_actor_retries_with_its_lifecycle_log_context_and_current_message(
    suite: Suite, records: list[dict[str, Any]]
) -> None:
    seen: list[tuple[Any, ...]] = []

    @dramatiq.actor(broker=suite.broker)
    async def flaky(import_id: str, note_id: str) -> None:
        await asyncio.sleep(0.01)
        message = CurrentMessage.get_current_message()
        assert message is not None
        seen.append((message.message_id, message.options.get("retries", 0)))
        logger.info("inside the coroutine")
        if len(seen) == 1:
            raise ConnectionError("blip")

    sent = flaky.send("imp-async", "n-1")
    suite.run()

    assert events(suite, "imp-async") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("COMPLETED", None),
    ]
    # CurrentMessage and the log context reach the coroutine on the event-loop thread.
    assert seen == [(sent.message_id, 0), (sent.message_id, 1)]
    inside = [r["extra"] for r in records if r["message"] == "inside the coroutine"]
    assert [(e["message_id"], e["import_id"], e["note_id"]) for e in inside] == [
        (sent.message_id, "imp-async", "n-1")
    ] * 2
    assert [(f.attempt, f.will_retry, f.error_type) for f in suite.errors] == [
        (1, True, "ConnectionError")
    ]


def test_an_async_actor_failing_for_good_is_dead_lettered_with_its_history(
    suite: Suite, records: list[dict[str, Any]]
) -> None:
    hooked: list[str] = []

    @dramatiq.actor(
        broker=suite.broker,
        max_attempts=2,
        on_error=lambda message, error: hooked.append(type(error).__name__),
    )
    async def broken(import_id: str) -> None:
        await asyncio.sleep(0)
        raise ValueError("bad data")

    sent = broken.send(import_id="imp-broken")
    with pytest.raises(ActorFailedError, match="actor 'broken' failed: ValueError: bad data"):
        suite.run()

    (letter,) = suite.dead_letters
    assert (letter.message_id, letter.error_type, letter.error_message) == (
        sent.message_id,
        "ValueError",
        "bad data",
    )
    assert [h["attempt"] for h in letter.error_history] == [1, 2]
    assert [m["message_id"] for m in dead_lettered(suite.broker)] == [sent.message_id]
    assert hooked == ["ValueError", "ValueError"]
    assert events(suite, "imp-broken") == [
        ("PROCESSING", None),
        ("RETRYING", 1),
        ("PROCESSING", None),
        ("FAILED", 2),
    ]
    assert [(f.attempt, f.will_retry) for f in suite.errors] == [(1, True), (2, False)]


def test_an_async_on_error_hook_runs_to_its_end_on_the_event_loop(
    suite: Suite, records: list[dict[str, Any]]
) -> None:
    cleaned: list[tuple[str, bool]] = []

    async def clean_up(message: Any, error: BaseException) -> None:
        await asyncio.sleep(0.01)  # a hook that awaits: it must be run, not just called
        loop_thread = get_event_loop_thread()
        on_loop = loop_thread is not None and asyncio.get_running_loop() is loop_thread.loop
        cleaned.append((type(error).__name__, on_loop))

    @dramatiq.actor(broker=suite.broker, max_attempts=2, on_error=clean_up)
    async def broken(import_id: str) -> None:
        raise ValueError("bad data")

    broken.send("imp-hook")
    with pytest.raises(ActorFailedError, match="actor 'broken' failed: ValueError: bad data"):
        suite.run()
    assert len(suite.dead_letters) == 1
    assert cleaned == [("ValueError", True), ("ValueError", True)]
    assert not [r for r in records if "on_error hook" in r["message"]]


def test_an_async_actor_under_an_open_breaker_waits_without_using_an_attempt(
    suite: Suite,
) -> None:
    runs: list[int] = []

    @dramatiq.actor(broker=suite.broker, breaker="svc", max_attempts=3)
    async def call_service(import_id: str) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        runs.append(message.options.get("retries", 0))
        await asyncio.sleep(0)
        if len(runs) <= 2:
            raise ConnectionError("service down")

    call_service.send("imp-breaker")
    suite.run()

    # The second failure opens the breaker (threshold 2): deferred, no attempt used, so
    # the trial after the breaker's reset timeout is still the second attempt.
    assert runs == [0, 1, 1]
    lifecycle = events(suite, "imp-breaker")
    assert [status for status, _ in lifecycle] == [
        "PROCESSING",
        "RETRYING",
        "PROCESSING",
        "RETRYING",
        "PROCESSING",
        "COMPLETED",
    ]
    deferral = suite.events("imp-breaker")[3]
    assert deferral.metadata["reason"] == "its circuit breaker is open"
    assert suite.breaker("svc").current_state == "closed"


def test_async_actors_complete_their_import_once(
    suite: Suite,
) -> None:
    completion = suite.stack.completion
    completion.expect("imp-done", 4)

    @dramatiq.actor(broker=suite.broker)
    async def parse(import_id: str, note_id: str) -> None:
        await asyncio.sleep(0.01)
        # mark_done makes a Redis round trip: off the event loop, in a thread.
        await asyncio.to_thread(completion.mark_done, import_id, note_id)

    for n in range(4):
        parse.send("imp-done", f"n-{n}")
    parse.send("imp-done", "n-0")  # a redelivered item counts once

    suite.run()
    ending = import_events(suite, "imp-done")
    # Marks made in different threads may publish their counts out of order.
    assert sorted(count for s, count, _ in ending if s == "PROCESSING") == [1, 2, 3, 4]
    assert [e for e in ending if e[0] != "PROCESSING"] == [("COMPLETED", 4, 4)]
    for n in range(4):
        assert events(suite, "imp-done", f"n-{n}")[-1] == ("COMPLETED", None)


class StalledTransport:
    """The suite's transport, whose first append waits until ``release`` is set: a Redis
    that stopped answering, seen from the broadcaster's thread."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, events: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(30), "the test never released the transport"
        return self.transport.append(events, *args, **kwargs)

    def read(self, import_id: str, after: int = 0, limit: int = 1_000) -> Any:
        return self.transport.read(import_id, after, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def test_publishing_from_an_async_actor_never_blocks_its_event_loop(
    suite: Suite,
) -> None:
    broadcaster = suite.stack.broadcaster
    stalled = StalledTransport(broadcaster.transport)
    broadcaster.transport = stalled
    ticks: list[float] = []
    published = threading.Event()
    ticked_while_publishing: list[int] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0)

    @dramatiq.actor(broker=suite.broker)
    async def report(import_id: str) -> None:
        ticker = asyncio.create_task(tick())
        try:
            # The PROCESSING event of this message has the broadcaster's thread stuck
            # in the transport by now, or soon.
            for _ in range(2_000):
                if stalled.entered.is_set():
                    break
                await asyncio.sleep(0.005)
            before = len(ticks)
            for n in range(1, 51):
                await add_status_event_and_broadcast_async(
                    {
                        "importId": import_id,
                        "status": "PROCESSING",
                        "currentCount": n,
                        "totalCount": 50,
                        "context": "progress",
                    }
                )
                await asyncio.sleep(0)
            ticked_while_publishing.append(len(ticks) - before)
        finally:
            ticker.cancel()
        published.set()

    report.send("imp-report")
    # Every publish returned while the transport was still stalled ...
    assert published.wait(10), "publishing waited for the transport"
    # ... the other task of the loop ran between them, and the loop still answers.
    assert ticked_while_publishing
    assert ticked_while_publishing[0] > 0
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None
    assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "up"), loop_thread.loop).result(5)
    assert not stalled.release.is_set()
    stalled.release.set()

    suite.run()
    streamed = suite.events("imp-report")
    progress = [e.current_count for e in streamed if e.context == "progress"]
    assert progress == list(range(1, 51))
    assert [e.status for e in streamed if e.context == "report"] == [
        "PROCESSING",
        "COMPLETED",
    ]
