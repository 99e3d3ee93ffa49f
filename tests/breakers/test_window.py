"""Property tests of the rate-counting window against a reference model.

The model is the rule written as plainly as it can be: keep the outcomes the window
covers in a list, count them, and compare exact fractions. Each store (Redis's script,
one outcome a call or in batches, and the local twin) must give the same sequence of
states and counts for the same outcomes.
"""

from __future__ import annotations

import uuid
from fractions import Fraction
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dramatiq_shared import CircuitBreakerConfig
from dramatiq_shared.breakers.local import LocalState
from dramatiq_shared.breakers.redis_state import RedisState
from dramatiq_shared.breakers.state import Counts
from dramatiq_shared.breakers.window import Window

CODES = st.text(alphabet="sfSF", min_size=1, max_size=40)
THRESHOLD = st.one_of(st.none(), st.integers(1, 100))


@st.composite
def configs(draw: Any, window: str = "count") -> CircuitBreakerConfig:
    failure_rate = draw(THRESHOLD)
    slow_rate = draw(st.integers(1, 100) if failure_rate is None else THRESHOLD)
    return CircuitBreakerConfig(
        window=window,
        window_size=draw(st.integers(1, 12) if window == "count" else st.integers(10, 400)),
        minimum_calls=draw(st.integers(1, 15)),
        failure_rate_threshold=failure_rate,
        slow_call_duration=None if slow_rate is None else 10,
        slow_call_rate_threshold=slow_rate,
        reset_timeout=60_000,
    )


def reference(
    config: CircuitBreakerConfig, codes: str, times: list[int] | None = None
) -> list[Any]:
    """The state and counts after each outcome; times (ms) for a time window."""
    kept: list[tuple[int, str]] = []
    states: list[Any] = []
    width = config.window_size // 10
    for number, code in enumerate(codes):
        if states and states[-1][0] == "open":
            states.append(("open", None))  # open for a minute: the rest is not counted
            continue
        now = times[number] if times else 0
        kept.append((now, code))
        if config.window == "count":
            kept = kept[-config.window_size :]
        else:
            kept = [(t, c) for t, c in kept if t // width >= now // width - 9]
        calls = len(kept)
        counts = Counts(calls, sum(c in "fF" for _, c in kept), sum(c in "SF" for _, c in kept))
        minimum = config.minimum_calls
        if config.window == "count":
            minimum = min(minimum, config.window_size)
        opens = calls >= minimum and any(
            threshold is not None and Fraction(part, calls) * 100 >= threshold
            for threshold, part in (
                (config.failure_rate_threshold, counts.failed),
                (config.slow_call_rate_threshold, counts.slow),
            )
        )
        states.append(("open" if opens else "closed", counts))
        if opens:
            kept = []
    return states


def as_seen(reply: Any) -> tuple[str, Counts | None]:
    # The reply that opens the breaker carries the counts that opened it; later ones
    # (the breaker open) carry none.
    return reply.kind, reply.window


@settings(max_examples=300, deadline=None)
@given(config=configs(), codes=CODES)
def test_the_local_window_moves_as_the_model(config: CircuitBreakerConfig, codes: str) -> None:
    state = LocalState(config)
    seen = []
    for code in codes:
        record = state.record_failure if code in "fF" else state.record_success
        seen.append(as_seen(record(None, slow=code in "SF")))
    assert seen == reference(config, codes)


@settings(max_examples=300, deadline=None)
@given(
    config=configs("time"),
    steps=st.lists(
        st.tuples(st.sampled_from("sfSF"), st.integers(0, 120)), min_size=1, max_size=40
    ),
)
def test_a_time_window_moves_as_the_model(
    config: CircuitBreakerConfig, steps: list[tuple[str, int]]
) -> None:
    window, now, times = Window(config), 1_000_000, []
    for _, gap in steps:
        now += gap
        times.append(now)
    codes = "".join(code for code, _ in steps)
    expected = reference(config, codes, times)
    # The window only counts; the model's breaker stops counting once it opens.
    end = next((n + 1 for n, (kind, _) in enumerate(expected) if kind == "open"), len(codes))
    seen = [window.add(code, at) for code, at in zip(codes[:end], times, strict=False)]
    assert seen == [counts for _, counts in expected[:end]]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=configs(), codes=CODES, cuts=st.lists(st.integers(1, 40), max_size=8))
def test_redis_moves_as_the_model_one_outcome_or_a_batch_at_a_time(
    redis_client: redis.Redis, config: CircuitBreakerConfig, codes: str, cuts: list[int]
) -> None:
    expected = reference(config, codes)
    single = RedisState(redis_client, f"one-{uuid.uuid4().hex}", config)
    seen = []
    for code in codes:
        record = single.record_failure if code in "fF" else single.record_success
        seen.append(as_seen(record(None, slow=code in "SF")))
    assert seen == expected

    # Batches, as a process's cached view sends them: each batch's reply is the
    # state after its last outcome.
    batched = RedisState(redis_client, f"batch-{uuid.uuid4().hex}", config)
    opened_at = next((n for n, (kind, _) in enumerate(expected) if kind == "open"), len(codes))
    start = 0
    for end in sorted({cut for cut in cuts if cut < len(codes)} | {len(codes)}):
        reply = batched.record(codes[start:end], None)
        want = ("open", None) if opened_at < start else expected[min(end - 1, opened_at)]
        assert as_seen(reply) == want, (codes, start, end)
        start = end
