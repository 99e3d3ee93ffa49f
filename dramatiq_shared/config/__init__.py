"""Validated configuration objects.

Each config is a frozen dataclass checked on construction: a bad value raises
:class:`~dramatiq_shared.errors.ConfigError` naming the field, the value and what
is allowed. Times are milliseconds, as in Dramatiq.

Three ways to build one:

* the constructor, with keyword arguments;
* :meth:`from_mapping`, which also takes the camelCase keys of the TypeScript
  system this library replaces (``maxAttempts``, ``circuitBreaker: {resetTimeout}``),
  so its JSON configs carry over;
* :meth:`from_env`, which reads the environment variables listed on each class.

Each config lives in its own module (:mod:`.retry`, :mod:`.breaker`, :mod:`.budget`,
:mod:`.database`, :mod:`.status`); import them from here.
"""

from __future__ import annotations

# The constants are imported by other modules of the library and stay out of __all__,
# as they were before the split; the ``as`` spelling marks them re-exported for mypy.
from ._base import ENV_PREFIX as ENV_PREFIX
from ._base import MAX_DELAY as MAX_DELAY

# Not public, but the fuzz tests check the key spelling rule of from_mapping directly.
from ._base import _snake_case as _snake_case
from ._error_specs import ErrorSpec, error_matches, resolve_error_specs
from .breaker import CircuitBreakerConfig
from .budget import WHEN_REFUSED, RetryBudgetConfig
from .database import DatabaseConfig, redact_url
from .retry import DRAMATIQ_DEFAULTS, JITTER_MODES, RetryConfig
from .status import StatusConfig

__all__ = [
    "DRAMATIQ_DEFAULTS",
    "JITTER_MODES",
    "WHEN_REFUSED",
    "CircuitBreakerConfig",
    "DatabaseConfig",
    "ErrorSpec",
    "RetryBudgetConfig",
    "RetryConfig",
    "StatusConfig",
    "error_matches",
    "redact_url",
    "resolve_error_specs",
]
