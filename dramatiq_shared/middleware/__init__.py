"""Dramatiq middleware, one a module, as Dramatiq does it."""

from __future__ import annotations

from .error_handling import ErrorHandling
from .retry import Retry

__all__ = ["ErrorHandling", "Retry"]
