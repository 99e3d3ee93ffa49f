"""Middleware defaults for retries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dramatiq.errors import Retry as RetryRequest
from dramatiq.middleware.shutdown import Shutdown
from dramatiq.middleware.time_limit import TimeLimitExceeded

from .._checks import check_int
from ..errors import ConfigError, PermanentError, TransientError
from ._base import ENV_PREFIX, MAX_DELAY, _Config, _env_fields, _parse_int, _parse_names
from ._error_specs import ErrorSpec, error_matches, resolve_error_specs
from .breaker import CircuitBreakerConfig
from .budget import RetryBudgetConfig

#: How retry delays are spread; ``True`` means ``"decorrelated"``, ``False`` ``"none"``.
JITTER_MODES = ("decorrelated", "full", "equal", "none", "dramatiq")


def _parse_attempts(text: str) -> int | None:
    return None if text.strip().lower() == "none" else _parse_int(text)


def _parse_jitter(text: str) -> bool | str:
    lowered = text.strip().lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(lowered, lowered)


@dataclass(frozen=True)
class RetryConfig(_Config):
    """Middleware defaults for retries; actors and messages may override each field.

    Environment: ``DRAMATIQ_SHARED_RETRY_MAX_ATTEMPTS`` (an int or ``none``),
    ``..._BASE_DELAY``, ``..._MAX_DELAY``, ``..._RETRYABLE_ERRORS`` (comma-separated
    names), ``..._JITTER`` (a mode or true/false); a ``circuit_breaker`` is built from the
    ``DRAMATIQ_SHARED_BREAKER_*`` variables when any of them is set, a ``budget`` from the
    ``DRAMATIQ_SHARED_RETRY_BUDGET_*`` ones likewise.

    Parameters:
      max_attempts: Executions in all, the first included; None retries for ever
        (Dramatiq's ``max_retries=None``). Default 3.
      base_delay: Milliseconds before the first retry. Default 1000.
      max_delay: Upper bound of any retry delay, in milliseconds, at most 7 days (what
        Dramatiq's brokers accept). Default 30000.
      retryable_errors: ``None`` retries every ``Exception``; otherwise exception
        classes or names (subclasses included). Default None.
      jitter: One of :data:`JITTER_MODES`; ``True`` is stored as ``"decorrelated"``
        and ``False`` as ``"none"``; ``"dramatiq"`` spreads them as Dramatiq's
        ``Retries`` does. Default True.
      circuit_breaker: Default breaker settings, a :class:`CircuitBreakerConfig` or a
        mapping for :meth:`CircuitBreakerConfig.from_mapping`. Default None.
      budget: A fleet-wide retry budget, a :class:`RetryBudgetConfig` or a mapping for
        :meth:`RetryBudgetConfig.from_mapping`; None retries without one. Default None.
    """

    max_attempts: int | None = 3
    base_delay: int = 1_000
    max_delay: int = 30_000
    retryable_errors: Sequence[ErrorSpec] | None = None
    jitter: bool | str = True
    circuit_breaker: CircuitBreakerConfig | None = None
    budget: RetryBudgetConfig | None = None

    _env = _env_fields(
        "RETRY_",
        {
            "max_attempts": _parse_attempts,
            "base_delay": _parse_int,
            "max_delay": _parse_int,
            "retryable_errors": _parse_names,
            "jitter": _parse_jitter,
        },
    )

    def __post_init__(self) -> None:
        if self.max_attempts is not None:
            check_int("max_attempts", self.max_attempts, minimum=1, error=ConfigError)
        check_int("base_delay", self.base_delay, minimum=0, error=ConfigError)
        check_int("max_delay", self.max_delay, minimum=0, maximum=MAX_DELAY, error=ConfigError)
        if self.max_delay < self.base_delay:
            raise ConfigError.invalid(
                "max_delay", self.max_delay, f">= base_delay ({self.base_delay})"
            )
        if self.retryable_errors is not None:
            specs = resolve_error_specs("retryable_errors", self.retryable_errors)
            object.__setattr__(self, "retryable_errors", specs)
        object.__setattr__(self, "jitter", _jitter_mode(self.jitter))
        for name, kind in (
            ("circuit_breaker", CircuitBreakerConfig),
            ("budget", RetryBudgetConfig),
        ):
            object.__setattr__(self, name, _nested(name, kind, getattr(self, name)))

    @classmethod
    def _env_extra(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if any(key.startswith(f"{ENV_PREFIX}BREAKER_") for key in environ):
            extra["circuit_breaker"] = CircuitBreakerConfig.from_env(environ)
        if any(key.startswith(f"{ENV_PREFIX}RETRY_BUDGET_") for key in environ):
            extra["budget"] = RetryBudgetConfig.from_env(environ)
        return extra

    def is_retryable(self, error: BaseException) -> bool:
        """Tell whether a failure with ``error`` may be retried under this config.

        A :class:`~dramatiq_shared.errors.PermanentError` never is; a
        :class:`~dramatiq_shared.errors.TransientError`, a ``dramatiq.Retry`` (asked
        for) and a worker's ``Shutdown`` (not the actor's fault) always are. Otherwise
        the ``retryable_errors`` filter decides; ``None`` admits every ``Exception`` and
        Dramatiq's ``TimeLimitExceeded`` (a ``BaseException``, but a failure like any other).
        """
        if isinstance(error, PermanentError):
            return False
        if isinstance(error, (TransientError, RetryRequest, Shutdown)):
            return True
        if self.retryable_errors is None:
            return isinstance(error, (Exception, TimeLimitExceeded))
        return error_matches(error, self.retryable_errors)


def _nested(name: str, kind: type[_Config], value: Any) -> Any:
    """``value`` as a ``kind`` config: a mapping converted, None kept, anything else refused."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        try:
            return kind.from_mapping(value)
        except ConfigError as error:
            # Name the nested field by its path, as the user wrote the mapping.
            raise ConfigError(f"{name}.{error}", field=name) from None
    raise ConfigError.invalid(name, value, f"a {kind.__name__}, a mapping or None")


def _jitter_mode(value: Any) -> str:
    if value is True:
        return "decorrelated"
    if value is False:
        return "none"
    if value in JITTER_MODES:
        return str(value)
    raise ConfigError.invalid("jitter", value, f"True, False or one of {', '.join(JITTER_MODES)}")


#: What Dramatiq's ``Retries`` does by default: 20 retries (21 executions), backoff
#: from 15 seconds doubling up to 7 days, spread as Dramatiq spreads it.
#: :func:`~dramatiq_shared.setup_broker` and :class:`~dramatiq_shared.middleware.Retry`
#: use it unless given a config.
DRAMATIQ_DEFAULTS = RetryConfig(
    max_attempts=21, base_delay=15_000, max_delay=MAX_DELAY, jitter="dramatiq"
)
