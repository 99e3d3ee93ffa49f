"""SharedCircuitBreaker against real Redis: atomic transitions, one trial at a time, fallback."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import redis
from dramatiq.middleware.shutdown import Shutdown
from dramatiq.middleware.time_limit import TimeLimitExceeded
from loguru import logger
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from dramatiq_shared import CircuitBreakerConfig, CircuitOpenError, PermanentError, ValidationError
from dramatiq_shared.breakers import Breakers, SharedCircuitBreaker
from dramatiq_shared.keys import Keys
from tests.conftest import free_port, wait_until

FAST = CircuitBreakerConfig(failure_threshold=3, reset_timeout=300, trial_timeout=2_000)


class Recorder(pybreaker.CircuitBreakerListener):
    """A pybreaker listener, as users write them."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.failures = 0
        self.successes = 0
        self.calls: list[Any] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((func, args, kwargs))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.changes.append((old_state.name, new_state.name))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.failures += 1

    def success(self, cb: Any) -> None:
        self.successes += 1


def breaker(
    client: redis.Redis, config: CircuitBreakerConfig = FAST, **kwargs: Any
) -> SharedCircuitBreaker:
    return SharedCircuitBreaker("svc", config, client, **kwargs)


def fail(cb: SharedCircuitBreaker, error: BaseException | None = None) -> None:
    with pytest.raises(type(error) if error else RuntimeError), cb:
        raise error or RuntimeError("down")


def events(client: redis.Redis) -> list[str]:
    return [
        fields[b"event"].decode()
        for _, fields in client.xrange(Keys().breaker_events)
        if fields[b"event"] != b"rejected"
    ]


def test_it_opens_once_at_the_threshold_and_refuses_calls(redis_client: redis.Redis) -> None:
    recorder = Recorder()
    cb = breaker(redis_client, listeners=[recorder])
    fail(cb)
    fail(cb)
    assert cb.current_state == "closed"
    assert cb.fail_counter == 2
    fail(cb)
    assert cb.current_state == "open"
    with pytest.raises(CircuitOpenError) as refused:
        cb.call(lambda: "never runs")
    assert 0 < refused.value.remaining <= 300
    assert recorder.changes == [("closed", "open")]
    assert recorder.failures == 3
    assert events(redis_client) == ["opened"]


def test_a_success_resets_the_count(redis_client: redis.Redis) -> None:
    cb = breaker(redis_client)
    fail(cb)
    fail(cb)
    assert cb.call(lambda: 42) == 42
    assert cb.fail_counter == 0
    fail(cb)
    fail(cb)
    assert cb.current_state == "closed"


@pytest.mark.parametrize(
    "error",
    [KeyError("excluded"), PermanentError("bad input"), ValidationError("bad"), Shutdown()],
)
def test_excluded_and_never_counted_errors_neither_trip_nor_reset(
    redis_client: redis.Redis, error: BaseException
) -> None:
    cb = breaker(
        redis_client, CircuitBreakerConfig(failure_threshold=3, excluded_errors=["KeyError"])
    )
    fail(cb)
    fail(cb)
    for _ in range(5):
        fail(cb, error)
    assert (cb.current_state, cb.fail_counter) == ("closed", 2)  # not tripped, not reset
    fail(cb)
    assert cb.current_state == "open"


def test_a_time_limit_counts(redis_client: redis.Redis) -> None:
    cb = breaker(redis_client)
    for _ in range(3):
        fail(cb, TimeLimitExceeded())
    assert cb.current_state == "open"


def test_half_open_lets_one_trial_through_and_closes_on_its_success(
    redis_client: redis.Redis,
) -> None:
    recorder = Recorder()
    cb = breaker(redis_client, listeners=[recorder])
    for _ in range(3):
        fail(cb)
    time.sleep(0.35)
    trial = cb.acquire()
    assert trial.trial is not None
    assert cb.current_state == "half-open"
    with pytest.raises(CircuitOpenError):
        cb.acquire()  # another caller while the trial runs
    cb.record_success(trial)
    assert cb.current_state == "closed"
    assert recorder.changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert events(redis_client) == ["opened", "half-open", "closed"]


def test_a_failed_trial_reopens_for_longer_up_to_the_cap(redis_client: redis.Redis) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, reset_timeout=100, max_reset_timeout=250, trial_timeout=1_000
    )
    cb = breaker(redis_client, config)
    fail(cb)
    open_times = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as refused:
            cb.acquire()
        open_times.append(refused.value.remaining)
        time.sleep(refused.value.remaining / 1000 + 0.02)
        fail(cb)  # the trial fails
    assert open_times[0] <= 100
    assert 100 < open_times[1] <= 200
    assert 200 < open_times[2] <= 250  # doubled to 400, capped at 250


def test_with_and_decorator_share_the_state_and_nest_as_one_call(
    redis_client: redis.Redis,
) -> None:
    cb = breaker(redis_client)

    @cb
    def fetch() -> str:
        with cb:  # nested use inside a guarded call is the same call
            raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch()
    assert cb.fail_counter == 2
    with pytest.raises(ConnectionError), cb.calling():
        raise ConnectionError("down")
    assert cb.current_state == "open"


def test_breakers_of_one_name_share_state_and_configs_apply_by_name(
    redis_client: redis.Redis,
) -> None:
    one = Breakers(redis_client, configs={"usda": {"failureThreshold": 1}})
    other = Breakers(redis_client, configs={"usda": FAST})
    fail(one["usda"])
    assert other["usda"].current_state == "open"
    assert one["elsewhere"].fail_max == 5
    assert list(one) == ["usda", "elsewhere"]


# --- 32 concurrent workers in 4 processes -------------------------------------------

TRIAL_SCRIPT = Path(__file__).with_name("breaker_trials.py")


def run_trial_processes(
    redis_url: str, mode: str, count: int, threads: int
) -> list[subprocess.Popen[str]]:
    start = time.time() + 1.5
    return [
        subprocess.Popen(
            [sys.executable, str(TRIAL_SCRIPT), redis_url, mode, str(threads), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


def test_32_workers_in_4_processes_open_the_breaker_exactly_once(
    redis_client: redis.Redis, redis_url: str
) -> None:
    processes = run_trial_processes(redis_url, "failures", 4, 8)
    openings = 0
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        openings += json.loads(out)
    assert openings == 1  # 800 failures reported, threshold 50: one process saw it open
    assert events(redis_client) == ["opened"]


def test_half_open_with_32_concurrent_workers_runs_one_trial_at_a_time(
    redis_client: redis.Redis, redis_url: str
) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=1, reset_timeout=200, success_threshold=6, trial_timeout=5_000
    )
    fail(breaker(redis_client, config))
    processes = run_trial_processes(redis_url, "trials", 4, 8)
    trials = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        trials.extend(json.loads(out))
    trials.sort()
    assert len(trials) == 6  # success_threshold trials, then closed
    for (_, end), (start, _) in itertools.pairwise(trials):
        assert end <= start, "two trials overlapped"
    assert breaker(redis_client, config).current_state == "closed"


def test_a_trial_whose_worker_is_killed_frees_the_lease_after_its_ttl(
    redis_client: redis.Redis, redis_url: str
) -> None:
    config = CircuitBreakerConfig(failure_threshold=1, reset_timeout=100, trial_timeout=1_500)
    cb = breaker(redis_client, config)
    fail(cb)
    time.sleep(0.15)
    (holder,) = run_trial_processes(redis_url, "hold", 1, 1)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "trial"  # it holds the lease...
    os.kill(holder.pid, signal.SIGKILL)  # ...and dies mid-trial
    holder.wait()
    killed_at = time.monotonic()
    with pytest.raises(CircuitOpenError) as refused:
        cb.acquire()
    assert 0 < refused.value.remaining <= 1_500
    while True:
        try:
            ticket = cb.acquire()
            break
        except CircuitOpenError:
            time.sleep(0.05)
    assert 1.0 < time.monotonic() - killed_at < 3.0
    cb.record_success(ticket)
    assert cb.current_state == "closed"


# --- Redis going away ----------------------------------------------------------------


def unreachable() -> redis.Redis:
    """A client of a port nobody listens on."""
    return redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))


def test_a_breaker_made_while_redis_is_unreachable_falls_back_closed() -> None:
    cb = Breakers(unreachable())["x"]
    assert cb.call(lambda: "served") == "served"
    fail(cb)
    assert cb.record_failure(cb.acquire(), RuntimeError("down")).state == "closed"
    cb.release(cb.acquire())
    assert (cb.current_state, cb.fail_counter) == ("closed", 0)


def test_a_breaker_made_while_redis_is_unreachable_falls_back_open() -> None:
    cb = Breakers(unreachable(), fallback="open")["x"]
    with pytest.raises(CircuitOpenError) as refused:
        cb.call(lambda: "never")
    assert refused.value.remaining > 0
    assert cb.current_state == "open"


def test_redis_going_down_mid_run_falls_back_logs_once_and_recovers(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, stop, start = private_redis
    records: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: records.append((m.record["level"].name, m.record["message"])),
        filter=lambda r: "reach Redis" in r["message"],
    )
    try:
        breakers = Breakers(client, default=CircuitBreakerConfig(failure_threshold=2))
        fail(breakers["svc"])
        held = breakers["svc"].acquire()  # a call under way when Redis goes
        stop()
        cb = breakers["made-during-the-outage"]
        for _ in range(10):  # calls go through, unrecorded
            assert cb.call(lambda: "served") == "served"
            fail(cb)
            fail(breakers["svc"])
        assert breakers["svc"].record_failure(held, RuntimeError("down")).state == "closed"
        assert breakers["svc"].current_state == "closed"
        assert [level for level, _ in records] == ["WARNING"]  # one outage, one warning
        start()
        time.sleep(1.1)  # the breakers ask Redis again after a second
        assert breakers["svc"].current_state == "closed"  # a new server: a fresh state
        assert [level for level, _ in records] == ["WARNING", "INFO"]
        fail(cb)
        fail(cb)
        assert cb.current_state == "open"
    finally:
        logger.remove(sink)


def test_redis_going_down_mid_run_with_the_open_fallback_refuses_calls(
    private_redis: tuple[redis.Redis, Any, Any],
) -> None:
    client, stop, start = private_redis
    breakers = Breakers(client, fallback="open")
    held = breakers["svc"].acquire()
    stop()

    def refused() -> bool:
        try:
            breakers["svc"].call(lambda: "ran")
        except CircuitOpenError:
            return True
        return False

    # The process's view answers for a closed breaker until its subscription breaks,
    # which it notices within a poll: from then on every call is refused.
    assert wait_until(refused, time.monotonic() + 5)
    with pytest.raises(CircuitOpenError):
        breakers["svc"].call(lambda: "never")
    with pytest.raises(CircuitOpenError):
        breakers["other"].acquire()
    assert breakers["svc"].record_failure(held, RuntimeError("down")).is_open
    assert breakers["svc"].current_state == "open"
    start()
    time.sleep(1.1)
    assert breakers["svc"].call(lambda: "served") == "served"


def test_pybreakers_manual_controls_work_on_the_shared_state(redis_client: redis.Redis) -> None:
    recorder = Recorder()
    cb = breaker(redis_client, listeners=[recorder])
    other = breaker(redis_client)
    assert cb.open() is True
    assert other.current_state == "open"
    with pytest.raises(CircuitOpenError):
        other.acquire()
    cb.half_open()
    assert other.current_state == "half-open"
    cb.close()
    assert other.call(lambda: "ok") == "ok"
    assert recorder.changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_it_offers_pybreakers_settings_and_tells_listeners_of_calls(
    redis_client: redis.Redis,
) -> None:
    recorder = Recorder()
    cb = breaker(redis_client, CircuitBreakerConfig(success_threshold=2), listeners=[recorder])
    assert (cb.name, cb.fail_max, cb.reset_timeout, cb.success_threshold) == ("svc", 5, 60.0, 2)
    assert cb.listeners == (recorder,)

    def add(a: int, b: int = 0) -> int:
        return a + b

    assert cb.call(add, 1, b=2) == 3
    assert recorder.calls == [(add, (1,), {"b": 2})]
    assert recorder.successes == 1
    cb.remove_listener(recorder)
    cb.call(add, 1)
    assert len(recorder.calls) == 1


# --- the same transitions in one process, without Redis -----------------------------


def test_a_local_breaker_moves_like_the_shared_one() -> None:
    recorder = Recorder()
    config = CircuitBreakerConfig(failure_threshold=2, reset_timeout=100, max_reset_timeout=150)
    cb = SharedCircuitBreaker("local", config, None, listeners=[recorder])
    fail(cb)
    fail(cb, KeyError("excluded? no: counted"))
    assert cb.current_state == "open"
    with pytest.raises(CircuitOpenError):
        cb.acquire()
    time.sleep(0.11)
    trial = cb.acquire()
    with pytest.raises(CircuitOpenError):
        cb.acquire()  # one trial at a time
    cb.record_failure(trial, RuntimeError("still down"))
    with pytest.raises(CircuitOpenError) as refused:
        cb.acquire()
    assert 100 < refused.value.remaining <= 150  # doubled, capped
    time.sleep(0.16)
    cb.record_success(cb.acquire())
    assert cb.current_state == "closed"
    assert recorder.changes == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


@pytest.mark.parametrize("where", ["redis", "local"])
def test_calls_slower_than_slow_call_duration_open_it_though_they_succeed(
    where: str, request: pytest.FixtureRequest
) -> None:
    config = CircuitBreakerConfig(
        slow_call_duration=40, slow_call_rate_threshold=50, minimum_calls=4
    )
    client = request.getfixturevalue("redis_client") if where == "redis" else None
    cb = SharedCircuitBreaker("slow", config, client)
    for _ in range(3):
        cb.call(lambda: None)
    assert cb.window == (3, 0, 0)
    cb.call(time.sleep, 0.05)  # 1 slow of 4: 25%
    assert cb.window == (4, 0, 1)
    cb.call(time.sleep, 0.05)  # 2 of 5: 40%
    assert cb.current_state == "closed"
    cb.call(time.sleep, 0.05)  # 3 of 6: 50%
    assert cb.current_state == "open"
    labels = {"breaker": "slow", "measure": "slow_call_rate"}
    assert REGISTRY.get_sample_value("dramatiq_shared_breaker_window", labels) == 50.0


def test_32_threads_share_a_local_breakers_single_trial() -> None:
    config = CircuitBreakerConfig(failure_threshold=1, reset_timeout=50, success_threshold=5)
    cb = SharedCircuitBreaker("local", config, None)
    fail(cb)
    time.sleep(0.06)
    trials: list[tuple[float, float]] = []
    lock = threading.Lock()

    def compete() -> None:
        while cb.current_state != "closed":
            try:
                ticket = cb.acquire()
            except CircuitOpenError:
                time.sleep(0.002)
                continue
            if ticket.trial is None:
                return
            began = time.monotonic()
            time.sleep(0.01)
            with lock:
                trials.append((began, time.monotonic()))
            cb.record_success(ticket)

    threads = [threading.Thread(target=compete) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials.sort()
    assert len(trials) == 5
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(trials))


def test_a_listener_of_the_breakers_hears_every_breaker_made_before_and_after() -> None:
    breakers = Breakers(None, configs={"a": {"failureThreshold": 1}, "b": {"failureThreshold": 1}})
    before = breakers["a"]
    heard: list[tuple[str, str]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            heard.append((cb.name, new_state.name))

    breakers.add_listener(Listener())
    before.open()
    breakers["b"].open()
    breakers["b"].close()
    assert heard == [("a", "open"), ("b", "open"), ("b", "closed")]
