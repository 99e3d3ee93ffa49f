"""dramatiq-shared: the resilient shared layer under every Dramatiq worker.

Error handling with context, retries with backoff and jitter, circuit breakers whose
state all worker processes share, live status broadcasting and the idempotent
database operations of a recipe-import pipeline. See DESIGN.md for the whole map.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .breakers import SharedCircuitBreaker
from .config import CircuitBreakerConfig, DatabaseConfig, RetryConfig, StatusConfig
from .errors import (
    CircuitOpenError,
    ConfigError,
    Defer,
    DramatiqSharedError,
    PermanentError,
    TransientError,
    ValidationError,
)
from .logging import configure_logging, message_context
from .middleware import CircuitBreaker, ErrorHandling, Retry

try:
    __version__ = version("dramatiq-shared")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # Configuration: frozen, validated on construction.
    "CircuitBreakerConfig",
    "DatabaseConfig",
    "RetryConfig",
    "StatusConfig",
    # Errors: one hierarchy under DramatiqSharedError.
    "CircuitOpenError",
    "ConfigError",
    "Defer",
    "DramatiqSharedError",
    "PermanentError",
    "TransientError",
    "ValidationError",
    # Middleware, each usable alone with broker.add_middleware().
    "CircuitBreaker",
    "ErrorHandling",
    "Retry",
    # Breakers shared by every worker process, for use around single calls too.
    "SharedCircuitBreaker",
    # Logging: one loguru stream, message context bound per message.
    "configure_logging",
    "message_context",
]
