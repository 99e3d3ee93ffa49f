"""Dramatiq middleware, one a module, as Dramatiq does it."""

from __future__ import annotations

from .circuit_breaker import CircuitBreaker
from .death_limit import DeathLimit
from .error_handling import ErrorHandling
from .heartbeat import Heartbeat
from .retry import Retry
from .retry_budget import RetryBudget
from .status import StatusBroadcast

__all__ = [
    "CircuitBreaker",
    "DeathLimit",
    "ErrorHandling",
    "Heartbeat",
    "Retry",
    "RetryBudget",
    "StatusBroadcast",
]
