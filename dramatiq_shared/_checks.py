"""Checks of single values, shared by configs (ConfigError) and input data (ValidationError).

Each check raises ``error.invalid(name, value, allowed)``, so every refusal reads
``"<name> must be <allowed>, got <value>"`` wherever it comes from.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, ValidationError, _InvalidValueError

#: The largest value a 32-bit INTEGER column holds, on PostgreSQL as on SQLite.
INT32_MAX = 2**31 - 1


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int,
    maximum: int | None = None,
    error: type[_InvalidValueError] = ValidationError,
) -> int:
    """Return ``value`` when it is an int within bounds; refuse it otherwise."""
    # bool is an int to Python, never to a user who wrote `maxAttempts: true`.
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f"an int >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise error.invalid(name, value, allowed)
    return value


def check_text(
    name: str,
    value: Any,
    *,
    max_length: int,
    allow_empty: bool = False,
    error: type[_InvalidValueError] = ValidationError,
) -> str:
    """Return ``value`` when it is a string that fits a text column; refuse it otherwise.

    A NUL character is refused too: PostgreSQL cannot store it in text.
    """
    if (
        not isinstance(value, str)
        or len(value) > max_length
        or (not allow_empty and not value.strip())
        or "\x00" in value
    ):
        kind = "a string" if allow_empty else "a non-blank string"
        raise error.invalid(name, value, f"{kind} of at most {max_length} characters, without NUL")
    return value


def check_name(name: str, value: Any) -> str:
    """Return ``value`` when it can name a breaker or a budget (a part of a Redis key):
    1 to 100 printable characters, no spaces; refuse it with a ``ConfigError`` otherwise."""
    if not (
        isinstance(value, str)
        and 0 < len(value) <= 100
        and value.isprintable()
        and " " not in value
    ):
        raise ConfigError.invalid(name, value, "a name of 1 to 100 printable characters, no spaces")
    return value


def check_id(name: str, value: Any) -> str:
    """Return ``value`` when it is a usable identifier: a non-blank string of <= 128 characters."""
    return check_text(name, value, max_length=128)
