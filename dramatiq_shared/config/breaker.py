"""Settings of the circuit breakers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._checks import check_int
from ..errors import ConfigError
from ._base import MAX_DELAY, _Config, _env_fields, _parse_int, _parse_names
from ._error_specs import ErrorSpec, error_matches, resolve_error_specs


@dataclass(frozen=True)
class CircuitBreakerConfig(_Config):
    """Settings of one circuit breaker.

    Environment: ``DRAMATIQ_SHARED_BREAKER_FAILURE_THRESHOLD``, ``..._RESET_TIMEOUT``,
    ``..._SUCCESS_THRESHOLD``, ``..._EXCLUDED_ERRORS`` (comma-separated names),
    ``..._TRIAL_TIMEOUT``, ``..._MAX_RESET_TIMEOUT``.

    Parameters:
      failure_threshold: Counted failures in a row that open the breaker. Default 5.
      reset_timeout: Milliseconds the breaker stays open before a trial call. Default 60000.
      success_threshold: Successful trials in half-open state that close it. Default 1.
      excluded_errors: Exceptions (classes or names, subclasses included) that neither
        count as failures nor reset the count. Default none.
      trial_timeout: Milliseconds a half-open trial may hold its lease; a trial whose
        worker died frees the breaker after this long. Default 30000.
      max_reset_timeout: Each failed trial doubles the open time, up to this many
        milliseconds. Default (None) 8 x ``reset_timeout``.
    """

    failure_threshold: int = 5
    reset_timeout: int = 60_000
    success_threshold: int = 1
    excluded_errors: Sequence[ErrorSpec] = ()
    trial_timeout: int = 30_000
    max_reset_timeout: int | None = None

    _env = _env_fields(
        "BREAKER_",
        {
            "failure_threshold": _parse_int,
            "reset_timeout": _parse_int,
            "success_threshold": _parse_int,
            "excluded_errors": _parse_names,
            "trial_timeout": _parse_int,
            "max_reset_timeout": _parse_int,
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

    def is_excluded(self, error: BaseException) -> bool:
        """Tell whether ``error`` is one the breaker ignores."""
        return error_matches(error, self.excluded_errors)
