"""The retry policy's pure parts: backoff delays, option resolution, argument checks.

Kept apart from the :class:`~dramatiq_shared.middleware.Retry` middleware so they can be
read and tested without a broker; the middleware is the only caller.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
from collections.abc import Mapping
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from .._checks import check_int
from ..config import RetryConfig
from ..errors import ConfigError

__all__ = [
    "MESSAGE_KEYS",
    "RETRY_OPTIONS",
    "backoff_delay",
    "exception_classes",
    "misfit",
    "resolve_settings",
]

#: Retry options an actor or a message may set, besides ``max_retries`` and ``max_defers``.
RETRY_OPTIONS = ("max_attempts", "base_delay", "max_delay", "retryable_errors", "jitter")
MESSAGE_KEYS = frozenset((*RETRY_OPTIONS, "max_retries", "max_defers"))


def backoff_delay(
    mode: str, retry: int, config: RetryConfig, previous: int | None, rng: random.Random
) -> int:
    """The delay in milliseconds before the ``retry``-th retry (1-based), per jitter ``mode``."""
    cap = min(config.max_delay, config.base_delay << min(retry - 1, 62))
    if mode == "none":
        return cap
    if mode == "full":
        return round(rng.uniform(0, cap))
    if mode == "equal":
        return round(rng.uniform(cap / 2, cap))
    upper = min(config.max_delay, 3 * (previous or config.base_delay))
    return round(rng.uniform(config.base_delay, max(config.base_delay, upper)))


def resolve_settings(
    config: RetryConfig, max_defers: int, options: Mapping[str, Any], where: str
) -> tuple[RetryConfig, int]:
    """Apply the retry options of an actor or a message over ``config`` and ``max_defers``.

    Raises:
      ConfigError: Naming ``where`` and the option, when one is invalid.
    """
    overrides = {key: options[key] for key in RETRY_OPTIONS if key in options}
    try:
        if "max_retries" in options and "max_attempts" not in options:
            retries = check_int("max_retries", options["max_retries"], minimum=0, error=ConfigError)
            overrides["max_attempts"] = retries + 1
        if "max_defers" in options:
            max_defers = check_int(
                "max_defers", options["max_defers"], minimum=0, error=ConfigError
            )
        if overrides:
            config = dataclasses.replace(config, **overrides)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}", field=error.field) from None
    return config, max_defers


def exception_classes(value: Any) -> bool:
    classes = value if isinstance(value, tuple) else (value,)
    return all(isinstance(c, type) and issubclass(c, BaseException) for c in classes)


def misfit(actor: dramatiq.Actor[..., Any] | None, message: MessageProxy) -> str | None:
    """Why the message's arguments cannot be passed to the actor, or None when they can.

    A TypeError from calling the actor with arguments that do not fit its signature
    would fail the same way every time: retrying it only delays the dead letter.
    """
    if actor is None:
        return None
    try:
        signature = inspect.signature(actor.fn)
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return None
    args = message.args if isinstance(message.args, (list, tuple)) else ()
    kwargs = message.kwargs if isinstance(message.kwargs, Mapping) else {}
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        parameters = ", ".join(
            str(p.replace(annotation=p.empty)) for p in signature.parameters.values()
        )
        return f"the message's arguments do not fit {actor.actor_name}({parameters}): {error}"
    return None
