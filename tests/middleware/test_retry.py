"""The Retry middleware, its logic on the StubBroker and on RedisBroker with real worker threads."""

from __future__ import annotations

import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import peewee
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import compute_backoff
from dramatiq.middleware import Retries
from dramatiq.middleware.shutdown import Shutdown, ShutdownNotifications
from dramatiq.middleware.time_limit import TimeLimitExceeded

from dramatiq_shared import ConfigError, Defer, PermanentError, RetryConfig, TransientError
from dramatiq_shared.config import DRAMATIQ_DEFAULTS
from dramatiq_shared.middleware import Retry
from dramatiq_shared.middleware.delivery import delivery
from dramatiq_shared.middleware.retry_policy import backoff_delay
from dramatiq_shared.stores import DeadLetterStore

from ..conftest import wait_until
from .conftest import Calls, EnqueueFailsBroker, dead_lettered, decisions, drain, install


def test_max_attempts_3_means_3_executions_a_dead_letter_row_and_the_dead_letter_queue(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    database: peewee.Database,
) -> None:
    retry = install(broker, database=database)

    @dramatiq.actor(broker=broker, max_attempts=3)
    def always_fails(import_id: str) -> None:
        calls()
        raise RuntimeError("broken")

    message = always_fails.send(import_id="imp-7")
    run_worker()
    assert len(calls) == 3

    (row,) = DeadLetterStore(database).list()
    assert row.message_id == message.message_id
    assert [(h["attempt"], h["error_type"], h["message"]) for h in row.error_history] == [
        (n, "RuntimeError", "broken") for n in (1, 2, 3)
    ]
    assert (row.actor_name, row.queue_name) == ("always_fails", "default")
    assert row.error_type == "RuntimeError"
    assert row.message["kwargs"] == {"import_id": "imp-7"}
    assert row.message["options"]["error_count"] == 3
    assert row.reason == "all 3 attempts failed"

    # Dramatiq's own dead-letter queue has it too (Redis keeps the options of the
    # last delivery as they were enqueued, before its failure was recorded).
    (dead,) = dead_lettered(broker)
    assert dead["message_id"] == message.message_id
    assert retry.counts() == {
        ("retry", "always_fails", "RuntimeError"): 2,
        ("exhausted", "always_fails", "RuntimeError"): 1,
    }


def test_the_second_execution_waits_at_least_base_delay(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker, config=RetryConfig(base_delay=100, max_delay=1000))

    @dramatiq.actor(broker=broker, max_attempts=2)
    def fails() -> None:
        calls()
        raise RuntimeError("again")

    fails.send()
    run_worker()
    first, second = calls.times
    assert second - first >= 0.100


def test_a_success_after_failures_is_not_dead_lettered(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_attempts=5)
    def flaky() -> None:
        calls()
        if len(calls) < 3:
            raise ConnectionError("blip")

    flaky.send()
    run_worker()
    assert len(calls) == 3
    assert dead_lettered(broker) == []
    # The third delivery carried the story of the first two.
    assert [h["attempt"] for h in calls.options[2]["error_history"]] == [1, 2]
    assert calls.options[2]["retries"] == 2


class ServiceTimeoutError(TimeoutError):
    pass


@pytest.mark.parametrize(
    ("error", "retryable_errors", "executions"),
    [
        (ValueError("bad"), ["TimeoutError"], 1),  # not in the filter
        (ServiceTimeoutError("slow"), ["TimeoutError"], 3),  # a subclass, by name
        (ServiceTimeoutError("slow"), [TimeoutError], 3),  # a subclass, by class
        (PermanentError("never"), None, 1),
        (TransientError("always"), [], 3),  # retryable whatever the filter
        (TimeLimitExceeded(), None, 3),  # a failure like any other
    ],
)
def test_what_is_retried(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    error: BaseException,
    retryable_errors: list[Any] | None,
    executions: int,
    records: list[dict[str, Any]],
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_attempts=3, retryable_errors=retryable_errors)
    def fails() -> None:
        calls()
        raise error

    fails.send()
    run_worker()
    assert len(calls) == executions
    assert len(dead_lettered(broker)) == 1
    expected = "not_retryable" if executions == 1 else "exhausted"
    assert decisions(records)[-1]["action"] == expected


def test_throws_is_honoured(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    records: list[dict[str, Any]],
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_attempts=5, throws=(KeyError,))
    def expected_failure() -> None:
        calls()
        raise KeyError("missing")

    expected_failure.send()
    run_worker()
    assert len(calls) == 1
    assert len(dead_lettered(broker)) == 1
    assert "throws" in decisions(records)[-1]["reason"]


def test_on_retry_exhausted_hears_of_every_final_failure_once(
    broker: dramatiq.Broker, run_worker: Callable[..., None]
) -> None:
    install(broker)
    heard: list[tuple[str, dict[str, Any]]] = []

    @dramatiq.actor(broker=broker)
    def gave_up(message: dict[str, Any], info: dict[str, Any]) -> None:
        heard.append((message["actor_name"], info))

    @dramatiq.actor(broker=broker, max_attempts=2, on_retry_exhausted="gave_up")
    def flaky() -> None:
        raise TimeoutError("slow service")

    @dramatiq.actor(broker=broker, max_attempts=5, on_retry_exhausted="gave_up")
    def poisoned() -> None:
        raise PermanentError("title must be a string")

    @dramatiq.actor(broker=broker, max_attempts=2)
    def flaky_quietly() -> None:
        raise TimeoutError("nobody listens")

    @dramatiq.actor(broker=broker, max_attempts=5, throws=KeyError, on_retry_exhausted="gave_up")
    def expected() -> None:
        raise KeyError("as declared")

    flaky.send()
    poisoned.send()
    flaky_quietly.send()
    expected.send()
    run_worker()
    found = dict(heard)
    # As Dramatiq's Retries: an exception in throws is no exhausted retry.
    assert "expected" not in found
    assert len(heard) == 2
    assert found["flaky"] == {
        "retries": 1,
        "max_retries": 1,
        "attempt": 2,
        "max_attempts": 2,
        "action": "exhausted",
        "reason": "all 2 attempts failed",
        "error_type": "TimeoutError",
        "error_message": "slow service",
    }
    # Dramatiq's Retries would stay silent here; a clean-up actor needs to know.
    assert found["poisoned"]["action"] == "not_retryable"
    assert found["poisoned"]["error_message"] == "title must be a string"


def test_retry_after_sets_the_delay(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker, config=RetryConfig(base_delay=1, max_delay=5000))

    class RateLimitedError(Exception):
        retry_after = 0.3  # seconds, as HTTP's Retry-After

    @dramatiq.actor(broker=broker, max_attempts=2)
    def limited() -> None:
        calls()
        if len(calls) == 1:
            raise RateLimitedError("429")

    limited.send()
    run_worker()
    assert calls.times[1] - calls.times[0] >= 0.3
    assert calls.options[1]["retry_delay"] == 300


def test_a_dramatiq_retry_delay_is_kept_as_asked(stub_broker: StubBroker) -> None:
    retry = install(stub_broker, config=RetryConfig(base_delay=1, max_delay=50))

    @dramatiq.actor(broker=stub_broker)
    def asks() -> None:
        raise dramatiq.Retry(delay=3_600_000)

    message = stub_broker.enqueue(asks.message())
    proxy = dramatiq.broker.MessageProxy(message)
    retry.after_process_message(stub_broker, proxy, exception=dramatiq.Retry(delay=3_600_000))
    decision = delivery(proxy).decision
    assert decision is not None
    assert (decision.action.value, decision.delay) == ("retry", 3_600_000)  # as Retries does


def test_defer_consumes_no_attempt_and_stops_at_max_defers(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    records: list[dict[str, Any]],
) -> None:
    retry = install(broker, max_defers=4)

    @dramatiq.actor(broker=broker, max_attempts=2)
    def waits() -> None:
        calls()
        raise Defer(5, reason="upstream busy")

    waits.send()
    run_worker()
    assert len(calls) == 5  # the first run and 4 deferrals
    assert [o.get("retries", 0) for o in calls.options] == [0] * 5
    assert [o.get("defers", 0) for o in calls.options] == [0, 1, 2, 3, 4]
    (dead,) = dead_lettered(broker)
    assert dead["message_id"]
    assert decisions(records)[-1]["reason"] == "deferred 4 times, max_defers is 4"
    assert retry.counts()[("deferred", "waits", "dramatiq_shared.errors.Defer")] == 4


def test_a_shutdown_is_an_attempt_as_dramatiq_counts_it(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_retries=1)
    def interrupted() -> None:
        calls()
        raise Shutdown("worker stopping")

    @dramatiq.actor(broker=broker, max_retries=0)
    def once() -> None:
        calls()
        raise Shutdown("worker stopping")

    interrupted.send()
    once.send()
    run_worker()
    runs = sorted(o.get("retries", 0) for o in calls.options)
    assert runs == [0, 0, 1]  # interrupted ran twice (retries 0, 1), once ran once
    assert len(dead_lettered(broker)) == 2


def test_a_worker_shutting_down_fails_a_message_without_retries_left(
    stub_broker: StubBroker,
) -> None:
    # Dramatiq's own test_shutdown_notifications_are_received, under Retry.
    install(stub_broker)
    stub_broker.add_middleware(ShutdownNotifications())
    runs: list[int] = []

    @dramatiq.actor(broker=stub_broker, notify_shutdown=True, max_retries=0)
    def long_job() -> None:
        runs.append(1)
        for _ in range(100):
            time.sleep(0.05)

    long_job.send()
    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()
    assert wait_until(lambda: runs, time.monotonic() + 10)
    worker.stop()
    with pytest.raises(Shutdown):
        stub_broker.join(long_job.queue_name)
    assert len(runs) == 1
    assert len(stub_broker.dead_letters) == 1


def test_a_message_option_overrides_the_actor_option(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_attempts=5)
    def fails() -> None:
        calls()
        raise RuntimeError("x")

    fails.send_with_options(max_attempts=2)
    run_worker()
    assert len(calls) == 2


def test_dramatiq_max_retries_is_understood(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_retries=1)
    def fails() -> None:
        calls()
        raise RuntimeError("x")

    fails.send()
    run_worker()
    assert len(calls) == 2


def test_a_retry_that_cannot_be_enqueued_is_dead_lettered_not_acked(
    redis_client: redis.Redis, redis_url: str, records: list[dict[str, Any]]
) -> None:
    broker = EnqueueFailsBroker(url=redis_url)
    broker.emit_after("process_boot")
    install(broker, broker_outage=500)
    ran = threading.Event()

    @dramatiq.actor(broker=broker, max_attempts=3)
    def fails() -> None:
        broker.broken = True  # Redis goes away while the actor runs
        ran.set()
        raise RuntimeError("boom")

    message = fails.send()
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert ran.wait(10)
        broker.join("default", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    (dead,) = dead_lettered(broker)
    assert dead["message_id"] == message.message_id
    assert decisions(records)[-1]["action"] == "enqueue_failed"
    tries = [r for r in records if r["message"].startswith("Enqueueing message")]
    assert len(tries) >= 2  # waited out for broker_outage, then failed
    assert any("could not be enqueued again" in r["message"] for r in records)


def test_a_retry_waits_out_a_short_broker_outage(redis_client: redis.Redis, redis_url: str) -> None:
    calls = Calls()
    broker = EnqueueFailsBroker(url=redis_url)
    broker.emit_after("process_boot")
    install(broker, broker_outage=10_000)

    @dramatiq.actor(broker=broker, max_attempts=2)
    def fails_once() -> None:
        calls()
        if len(calls) == 1:
            broker.broken = True  # Redis goes away for 300 ms while the actor runs
            threading.Timer(0.3, lambda: setattr(broker, "broken", False)).start()
            raise RuntimeError("boom")

    fails_once.send()
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        broker.join("default", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    assert len(calls) == 2  # retried once the broker was back, not dead-lettered
    assert not dead_lettered(broker)


def test_installing_both_retry_layers_is_refused(stub_broker: StubBroker) -> None:
    stub_broker.add_middleware(Retry())
    assert any(isinstance(m, Retries) for m in stub_broker.middleware)
    with pytest.raises(ConfigError, match="remove Retries first"):

        @dramatiq.actor(broker=stub_broker)
        def anything() -> None:
            pass

    with pytest.raises(ConfigError, match="every failure would be retried twice"):
        dramatiq.Worker(stub_broker).start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "actor 'bad': max_attempts must be an int >= 1, got 0"),
        ({"max_retries": -1}, "actor 'bad': max_retries must be an int >= 0, got -1"),
        ({"jitter": "wild"}, "actor 'bad': jitter must be True, False or one of"),
        ({"retryable_errors": ["nope.Error"]}, "retryable_errors\\[0\\] must name an importable"),
        ({"max_defers": "x"}, "actor 'bad': max_defers must be an int >= 0"),
        ({"on_error": "cleanup"}, "actor 'bad': on_error must be a callable"),
        ({"on_retry_exhausted": 3}, "actor 'bad': on_retry_exhausted must be an actor's name"),
        ({"throws": "KeyError"}, "actor 'bad': throws must be an exception class or a tuple"),
        (
            {"max_attempts": 3, "max_retries": 2},
            "actor 'bad': both 'max_attempts' and Dramatiq's 'max_retries' are set",
        ),
        (
            {"base_delay": 10, "min_backoff": 10},
            "actor 'bad': both 'base_delay' and Dramatiq's 'min_backoff' are set",
        ),
        (
            {"max_delay": 10, "max_backoff": 10},
            "actor 'bad': both 'max_delay' and Dramatiq's 'max_backoff' are set",
        ),
        ({"retry_when": 3}, "actor 'bad': retry_when must be a callable"),
        ({"min_backoff": 20, "max_backoff": 10}, "actor 'bad': max_delay must be >= base_delay"),
    ],
)
def test_bad_actor_options_are_refused_at_declaration(
    stub_broker: StubBroker, options: dict[str, Any], message: str
) -> None:
    install(stub_broker)
    with pytest.raises(ConfigError, match=message):
        dramatiq.actor(broker=stub_broker, actor_name="bad", **options)(lambda: None)


def test_a_bad_message_option_is_logged_and_the_actor_option_used(
    stub_broker: StubBroker, records: list[dict[str, Any]]
) -> None:
    install(stub_broker)
    seen = []

    @dramatiq.actor(broker=stub_broker, max_attempts=2)
    def fails() -> None:
        seen.append(1)
        raise RuntimeError("x")

    fails.send_with_options(max_attempts="lots")
    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()
    stub_broker.join("default", fail_fast=False)
    worker.join()
    worker.stop()
    assert len(seen) == 2
    assert any("max_attempts must be an int >= 1, got 'lots'" in r["message"] for r in records)


# --- the delays themselves -------------------------------------------------------------

SAMPLES = 10_000


@pytest.mark.parametrize("mode", ["none", "full", "equal", "decorrelated"])
def test_sampled_delays_stay_within_their_documented_bounds(mode: str) -> None:
    config = RetryConfig(base_delay=100, max_delay=5_000)
    rng = random.Random(7)
    for retry in (1, 2, 3, 6, 12):
        cap = min(config.max_delay, config.base_delay * 2 ** (retry - 1))
        previous: int | None = None
        for _ in range(SAMPLES):
            delay = backoff_delay(mode, retry, config, previous, rng)
            lower, upper = {
                "none": (cap, cap),
                "full": (0, cap),
                "equal": (cap // 2, cap),
                "decorrelated": (
                    config.base_delay,
                    min(config.max_delay, 3 * (previous or config.base_delay)),
                ),
            }[mode]
            assert lower <= delay <= upper, (mode, retry, previous, delay)
            if mode == "decorrelated":
                previous = delay


@pytest.mark.parametrize("mode", ["full", "decorrelated"])
def test_jitter_spreads_delays(mode: str) -> None:
    # Delays are whole milliseconds: the range must be wide for no two in a row to match.
    config = RetryConfig(base_delay=1_000, max_delay=300_000)
    rng = random.Random(11)
    previous = None
    delays = []
    for _ in range(SAMPLES):
        previous = backoff_delay(mode, 10, config, previous, rng)
        delays.append(previous)
    assert all(a != b for a, b in itertools.pairwise(delays))
    assert statistics.stdev(delays) > 0.1 * statistics.mean(delays)
    assert min(delays) >= (0 if mode == "full" else 1_000)
    assert max(delays) <= 300_000


def test_without_jitter_the_delay_doubles_up_to_max_delay() -> None:
    config = RetryConfig(base_delay=100, max_delay=1_000, jitter=False)
    rng = random.Random()
    assert [backoff_delay("none", n, config, None, rng) for n in range(1, 7)] == [
        100,
        200,
        400,
        800,
        1000,
        1000,
    ]


def test_the_error_history_keeps_the_last_10_attempts_and_the_total(
    stub_broker: StubBroker, database: peewee.Database
) -> None:
    install(stub_broker, config=RetryConfig(base_delay=0, max_delay=0), database=database)

    @dramatiq.actor(broker=stub_broker, max_attempts=12)
    def fails() -> None:
        raise RuntimeError("x" * 2_000)

    fails.send()
    drain(stub_broker)
    (row,) = DeadLetterStore(database).list()
    assert [h["attempt"] for h in row.error_history] == list(range(3, 13))
    assert row.message["options"]["error_count"] == 12
    assert {len(h["message"]) for h in row.error_history} == {500}


def test_a_real_time_limit_counts_as_a_failed_attempt(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker)

    @dramatiq.actor(broker=broker, max_attempts=2, time_limit=200)
    def too_slow() -> None:
        calls()
        for _ in range(100):  # TimeLimit interrupts the thread between bytecodes
            time.sleep(0.02)

    too_slow.send()
    run_worker()
    assert len(calls) == 2
    assert len(dead_lettered(broker)) == 1


# --- Dramatiq's Retries options, with Dramatiq's meaning --------------------------------


def test_message_min_and_max_backoff_are_honoured(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    records: list[dict[str, Any]],
) -> None:
    install(broker, config=RetryConfig(base_delay=10_000, max_delay=60_000, jitter="dramatiq"))

    @dramatiq.actor(broker=broker, max_retries=1)
    def fails_once() -> None:
        calls()
        if len(calls) == 1:
            raise RuntimeError("once")

    fails_once.send_with_options(min_backoff=0, max_backoff=0)
    run_worker()
    assert len(calls) == 2
    assert [(d["action"], d["delay"]) for d in decisions(records)] == [("retry", 0)]


def test_retry_when_decides_instead_of_max_retries(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    records: list[dict[str, Any]],
) -> None:
    install(broker, config=RetryConfig(base_delay=0, max_delay=0))
    asked: list[tuple[int, str]] = []

    def retry_when(retries: int, exception: BaseException) -> bool:
        asked.append((retries, type(exception).__name__))
        return retries < 2

    @dramatiq.actor(broker=broker, max_retries=0, retry_when=retry_when)
    def fails() -> None:
        calls()
        raise ValueError("x")

    fails.send()
    run_worker()
    assert len(calls) == 3
    assert asked == [(0, "ValueError"), (1, "ValueError"), (2, "ValueError")]
    taken = sorted((d["attempt"], d["action"], d["reason"]) for d in decisions(records))
    assert taken == [
        (1, "retry", "attempt 1 of 1 failed"),
        (2, "retry", "attempt 2 of 1 failed"),
        (3, "exhausted", "retry_when refused retry 3"),
    ]
    assert len(dead_lettered(broker)) == 1


def test_max_retries_none_retries_for_ever(
    broker: dramatiq.Broker, run_worker: Callable[..., None], calls: Calls
) -> None:
    install(broker, config=RetryConfig(max_attempts=2, base_delay=0, max_delay=0))

    @dramatiq.actor(broker=broker, max_retries=None)
    def stubborn() -> None:
        calls()
        if len(calls) < 8:
            raise RuntimeError("not yet")

    stubborn.send()
    run_worker()
    assert len(calls) == 8
    assert calls.options[-1]["retries"] == 7
    assert dead_lettered(broker) == []


def test_retry_without_a_config_is_dramatiqs_retries() -> None:
    assert Retry().config == DRAMATIQ_DEFAULTS
    assert (DRAMATIQ_DEFAULTS.max_attempts, DRAMATIQ_DEFAULTS.base_delay) == (21, 15_000)
    assert DRAMATIQ_DEFAULTS.max_delay == 7 * 86_400_000
    assert Retry(max_retries=None).config.max_attempts is None
    tuned = Retry(max_retries=3, min_backoff=5, max_backoff=10)
    assert (tuned.config.max_attempts, tuned.config.base_delay, tuned.config.max_delay) == (
        4,
        5,
        10,
    )
    # A max_backoff below the inherited min_backoff caps it, as in Dramatiq.
    assert Retry(max_backoff=100).config.base_delay == 100


@pytest.mark.parametrize("retry", [1, 2, 5, 12, 40])
def test_dramatiq_jitter_is_dramatiqs_compute_backoff(retry: int) -> None:
    config = RetryConfig(base_delay=15_000, max_delay=86_400_000, jitter="dramatiq")
    for seed in range(200):
        random.seed(seed)
        _, theirs = compute_backoff(retry - 1, factor=15_000, max_backoff=86_400_000)
        assert backoff_delay("dramatiq", retry, config, None, random.Random(seed)) == theirs


def test_a_failure_sets_retries_traceback_and_requeue_timestamp_as_dramatiq(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    database: peewee.Database,
) -> None:
    install(broker, database=database)
    told: list[dict[str, Any]] = []

    @dramatiq.actor(broker=broker)
    def on_fail(message: dict[str, Any], exception: dict[str, Any]) -> None:
        told.append(message)

    @dramatiq.actor(broker=broker, max_retries=1, on_failure="on_fail")
    def broken() -> None:
        calls()
        raise RuntimeError("broken")

    started = int(time.time() * 1000)
    broken.send()
    run_worker()
    assert len(calls) == 2
    retried = calls.options[1]  # the retry carries the first failure's
    assert 'raise RuntimeError("broken")' in retried["traceback"]
    assert retried["traceback"].rstrip().endswith("RuntimeError: broken")
    assert started <= retried["requeue_timestamp"] <= int(time.time() * 1000)
    # on_failure hears of each failed attempt, after Retry set them (as after Retries).
    payloads = sorted((m["options"] for m in told), key=lambda options: options["retries"])
    assert [options["retries"] for options in payloads] == [1, 2]
    (row,) = DeadLetterStore(database).list()
    for options in (*payloads, row.message["options"]):
        assert "RuntimeError: broken" in options["traceback"]
        assert options["requeue_timestamp"] >= retried["requeue_timestamp"]
    assert row.message["options"]["retries"] == 2


def test_control_flow_exceptions_are_not_logged_as_errors(
    broker: dramatiq.Broker,
    run_worker: Callable[..., None],
    calls: Calls,
    records: list[dict[str, Any]],
) -> None:
    install(broker, config=RetryConfig(base_delay=0, max_delay=0))

    @dramatiq.actor(broker=broker)
    def asks_again() -> None:
        calls()
        if len(calls) == 1:
            raise dramatiq.Retry(delay=1)

    @dramatiq.actor(broker=broker, throws=KeyError)
    def expected() -> None:
        raise KeyError("as declared")

    @dramatiq.actor(broker=broker, max_retries=0)
    def limited() -> None:
        raise dramatiq.RateLimitExceeded("rate limit exceeded for key 'k'")

    @dramatiq.actor(broker=broker, max_retries=0)
    def faulty() -> None:
        raise RuntimeError("a bug")

    for actor in (asks_again, expected, limited, faulty):
        actor.send()
    run_worker()
    assert len(calls) == 2
    failed = sorted(
        (r["extra"]["actor"], r["level"]["name"], r["exception"] is not None)
        for r in records
        if r["message"] == "Action execution failed"
    )
    assert failed == [
        ("asks_again", "INFO", False),  # retried, as asked
        ("expected", "WARNING", False),  # failed for good, as declared
        ("faulty", "ERROR", True),
        ("limited", "WARNING", False),
    ]
