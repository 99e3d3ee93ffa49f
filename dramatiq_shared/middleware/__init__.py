"""Dramatiq middleware, one a module, as Dramatiq does it."""

from __future__ import annotations

from .circuit_breaker import CircuitBreaker
from .error_handling import ErrorHandling
from .retry import Retry

__all__ = ["CircuitBreaker", "ErrorHandling", "Retry"]
