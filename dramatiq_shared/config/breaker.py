"""Settings of the circuit breakers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .._checks import check_int
from ..errors import ConfigError
from ._base import MAX_DELAY, _Config, _env_fields, _parse_int, _parse_names, _parse_number
from ._error_specs import ErrorSpec, error_matches, resolve_error_specs

#: The kinds of sliding window, and resilience4j's names for them.
WINDOWS = {"count": "count", "time": "time", "count_based": "count", "time_based": "time"}
#: Most calls a count window holds: each is an entry of a Redis list.
MAX_WINDOW_CALLS = 10_000
#: A time window is kept in this many buckets, so it spans 90-100% of its size.
TIME_BUCKETS = 10


def _check_rate(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ConfigError.invalid(name, value, "a percentage above 0 and at most 100, or None")
    return float(value)


@dataclass(frozen=True)
class CircuitBreakerConfig(_Config):
    """Settings of one circuit breaker.

    A breaker counts consecutive failures (pybreaker's model, the default), or, once a
    ``failure_rate_threshold`` or a ``slow_call_duration`` is set, the rates of failed
    and slow calls among the last calls of a sliding window (resilience4j's model).
    Mappings may name the rate settings as resilience4j does: ``slidingWindowType``
    (``COUNT_BASED``/``TIME_BASED``), ``slidingWindowSize``, ``minimumNumberOfCalls``,
    ``slowCallDurationThreshold``, ``permittedNumberOfCallsInHalfOpenState``; durations
    are milliseconds.

    Environment: ``DRAMATIQ_SHARED_BREAKER_FAILURE_THRESHOLD``, ``..._RESET_TIMEOUT``,
    ``..._SUCCESS_THRESHOLD``, ``..._EXCLUDED_ERRORS`` (comma-separated names),
    ``..._TRIAL_TIMEOUT``, ``..._MAX_RESET_TIMEOUT``, ``..._WINDOW``, ``..._WINDOW_SIZE``,
    ``..._FAILURE_RATE_THRESHOLD``, ``..._MINIMUM_CALLS``, ``..._SLOW_CALL_DURATION``,
    ``..._SLOW_CALL_RATE_THRESHOLD``, ``..._HALF_OPEN_CALLS``.

    Parameters:
      failure_threshold: Counted failures in a row that open the breaker, when it counts
        no rates. Default 5.
      reset_timeout: Milliseconds the breaker stays open before a trial call. Default 60000.
      success_threshold: Successful trials in half-open state that close it, when it
        counts no rates. Default 1.
      excluded_errors: Exceptions (classes or names, subclasses included) that neither
        count as failures nor reset the count. Default none.
      trial_timeout: Milliseconds a half-open trial may hold its lease; a trial whose
        worker died frees the breaker after this long. Default 30000.
      max_reset_timeout: Each failed trial doubles the open time, up to this many
        milliseconds. Default (None) 8 x ``reset_timeout``.
      window: ``"count"``: the rates are of the last ``window_size`` calls; ``"time"``:
        of the calls of the last ``window_size`` milliseconds, kept in 10 buckets (so a
        call counts for 90 to 100% of that time). Default ``"count"``.
      window_size: Calls (at most 10000) or milliseconds (at least 10). Default 100.
      failure_rate_threshold: Percentage of failed calls in the window that opens the
        breaker. Default None: not counted.
      minimum_calls: Calls the window must hold before a rate can open the breaker (a
        count window's size, if smaller). Default 100.
      slow_call_duration: Milliseconds after which a call is slow, failed or not.
        Default None: no call is slow.
      slow_call_rate_threshold: Percentage of slow calls in the window that opens the
        breaker. Default 100 once ``slow_call_duration`` is set.
      half_open_calls: Trial calls let through fleet-wide while half-open. Counting
        failures in a row, that many run at once, a failed one re-opens the breaker and
        ``success_threshold`` successful ones close it; counting rates, exactly that many
        run, and their rates close or re-open it once all are judged. Default 1.
    """

    failure_threshold: int = 5
    reset_timeout: int = 60_000
    success_threshold: int = 1
    excluded_errors: Sequence[ErrorSpec] = ()
    trial_timeout: int = 30_000
    max_reset_timeout: int | None = None
    window: str = "count"
    window_size: int = 100
    failure_rate_threshold: float | None = None
    minimum_calls: int = 100
    slow_call_duration: int | None = None
    slow_call_rate_threshold: float | None = None
    half_open_calls: int = 1

    _aliases: ClassVar[dict[str, str]] = {
        "sliding_window_type": "window",
        "sliding_window_size": "window_size",
        "minimum_number_of_calls": "minimum_calls",
        "slow_call_duration_threshold": "slow_call_duration",
        "permitted_number_of_calls_in_half_open_state": "half_open_calls",
    }
    _env = _env_fields(
        "BREAKER_",
        {
            "failure_threshold": _parse_int,
            "reset_timeout": _parse_int,
            "success_threshold": _parse_int,
            "excluded_errors": _parse_names,
            "trial_timeout": _parse_int,
            "max_reset_timeout": _parse_int,
            "window": str,
            "window_size": _parse_int,
            "failure_rate_threshold": _parse_number,
            "minimum_calls": _parse_int,
            "slow_call_duration": _parse_int,
            "slow_call_rate_threshold": _parse_number,
            "half_open_calls": _parse_int,
        },
    )

    def __post_init__(self) -> None:
        check_int("failure_threshold", self.failure_threshold, minimum=1, error=ConfigError)
        check_int("reset_timeout", self.reset_timeout, minimum=1, error=ConfigError)
        check_int("success_threshold", self.success_threshold, minimum=1, error=ConfigError)
        check_int("trial_timeout", self.trial_timeout, minimum=1, error=ConfigError)
        if self.max_reset_timeout is None:
            object.__setattr__(self, "max_reset_timeout", 8 * self.reset_timeout)
        check_int(
            "max_reset_timeout",
            self.max_reset_timeout,
            minimum=self.reset_timeout,
            maximum=MAX_DELAY,
            error=ConfigError,
        )
        specs = resolve_error_specs("excluded_errors", self.excluded_errors)
        object.__setattr__(self, "excluded_errors", specs)
        self._check_window()

    def _check_window(self) -> None:
        window = WINDOWS.get(self.window.strip().lower()) if isinstance(self.window, str) else None
        if window is None:
            raise ConfigError.invalid("window", self.window, "'count' or 'time'")
        object.__setattr__(self, "window", window)
        if window == "count":
            size, most = self.window_size, MAX_WINDOW_CALLS
            check_int("window_size", size, minimum=1, maximum=most, error=ConfigError)
        else:
            check_int("window_size", self.window_size, minimum=TIME_BUCKETS, error=ConfigError)
        check_int("minimum_calls", self.minimum_calls, minimum=1, error=ConfigError)
        check_int("half_open_calls", self.half_open_calls, minimum=1, error=ConfigError)
        rate = _check_rate("failure_rate_threshold", self.failure_rate_threshold)
        object.__setattr__(self, "failure_rate_threshold", rate)
        slow_rate = _check_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)
        if self.slow_call_duration is None:
            if slow_rate is not None:
                raise ConfigError(
                    "slow_call_rate_threshold needs slow_call_duration: the milliseconds"
                    " after which a call is slow",
                    field="slow_call_rate_threshold",
                )
        else:
            check_int("slow_call_duration", self.slow_call_duration, minimum=1, error=ConfigError)
            slow_rate = 100.0 if slow_rate is None else slow_rate
        object.__setattr__(self, "slow_call_rate_threshold", slow_rate)

    @property
    def counts_rates(self) -> bool:
        """Whether the breaker judges rates over a window, not failures in a row."""
        return self.failure_rate_threshold is not None or self.slow_call_duration is not None

    @property
    def window_minimum(self) -> int:
        """Calls the window must hold before its rates count."""
        if self.window == "count":
            return min(self.minimum_calls, self.window_size)
        return self.minimum_calls

    def is_excluded(self, error: BaseException) -> bool:
        """Tell whether ``error`` is one the breaker ignores."""
        return error_matches(error, self.excluded_errors)
