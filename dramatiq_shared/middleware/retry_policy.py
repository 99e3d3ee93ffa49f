"""The retry policy's pure parts: backoff delays, option resolution, argument checks.

Kept apart from the :class:`~dramatiq_shared.middleware.Retry` middleware so they can be
read and tested without a broker; the middleware is the only caller.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from .._checks import check_int
from ..config import RetryConfig
from ..errors import ConfigError

__all__ = [
    "DRAMATIQ_NAMES",
    "MESSAGE_KEYS",
    "RETRY_OPTIONS",
    "Settings",
    "backoff_delay",
    "exception_classes",
    "misfit",
    "resolve_settings",
]

#: Retry options an actor or a message may set, besides the Dramatiq spellings below
#: and ``max_defers``.
RETRY_OPTIONS = ("max_attempts", "base_delay", "max_delay", "retryable_errors", "jitter")
#: Dramatiq's ``Retries`` option for each of ours it means the same as.
DRAMATIQ_NAMES = {
    "max_attempts": "max_retries",
    "base_delay": "min_backoff",
    "max_delay": "max_backoff",
}
#: Options a message may carry that change its retries (``retry_when`` is a callable,
#: which no encoder carries: an actor's only, as in Dramatiq).
MESSAGE_KEYS = frozenset((*RETRY_OPTIONS, *DRAMATIQ_NAMES.values(), "max_defers"))

RetryWhen = Callable[[int, BaseException], bool]


@dataclass(frozen=True)
class Settings:
    """What decides the retries of one actor's messages, resolved once an actor."""

    config: RetryConfig
    max_defers: int
    #: Dramatiq's predicate ``(retries so far, exception) -> retry?``; when set it
    #: decides instead of ``max_attempts``.
    retry_when: RetryWhen | None = None
    #: Exception classes that fail the message at once (Dramatiq's ``throws``).
    throws: type[BaseException] | tuple[type[BaseException], ...] | None = None
    #: The actor told of a message failed for good.
    on_retry_exhausted: str | None = None


def backoff_delay(
    mode: str, retry: int, config: RetryConfig, previous: int | None, rng: random.Random
) -> int:
    """The delay in milliseconds before the ``retry``-th retry (1-based), per jitter ``mode``."""
    if mode == "dramatiq":  # dramatiq.common.compute_backoff, as Retries calls it
        delay = int(config.base_delay * (1 << min(retry - 1, 32)) * rng.uniform(1, 2))
        return delay if delay <= config.max_delay else int(config.max_delay * rng.uniform(0.5, 1))
    cap = min(config.max_delay, config.base_delay << min(retry - 1, 62))
    if mode == "none":
        return cap
    if mode == "full":
        return round(rng.uniform(0, cap))
    if mode == "equal":
        return round(rng.uniform(cap / 2, cap))
    upper = min(config.max_delay, 3 * (previous or config.base_delay))
    return round(rng.uniform(config.base_delay, max(config.base_delay, upper)))


def resolve_settings(settings: Settings, options: Mapping[str, Any], where: str) -> Settings:
    """Apply the retry options of a middleware, an actor or a message over ``settings``.

    Each of ``max_attempts``, ``base_delay`` and ``max_delay`` may be given in its
    Dramatiq spelling instead (``max_retries``, one less, None for ever;
    ``min_backoff``; ``max_backoff``), never in both. A ``max_delay`` below the
    ``base_delay`` it inherits caps it, as ``max_backoff`` caps ``min_backoff`` in
    Dramatiq; given together, the two must agree.

    Raises:
      ConfigError: Naming ``where`` and the option, when one is invalid or given twice.
    """
    overrides = {key: options[key] for key in RETRY_OPTIONS if key in options}
    config, max_defers, retry_when = settings.config, settings.max_defers, settings.retry_when
    try:
        overrides.update(_dramatiq_spellings(options))
        if "max_defers" in options:
            max_defers = check_int(
                "max_defers", options["max_defers"], minimum=0, error=ConfigError
            )
        if "retry_when" in options:
            retry_when = options["retry_when"]
            if retry_when is not None and not callable(retry_when):
                raise ConfigError.invalid(
                    "retry_when", retry_when, "a callable (retries, exception) -> bool, or None"
                )
        if overrides:
            config = dataclasses.replace(config, **_capped(overrides, config))
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}", field=error.field) from None
    return dataclasses.replace(
        settings, config=config, max_defers=max_defers, retry_when=retry_when
    )


def _dramatiq_spellings(options: Mapping[str, Any]) -> dict[str, Any]:
    """Our fields for the Dramatiq spellings in ``options``."""
    found = {}
    for ours, theirs in DRAMATIQ_NAMES.items():
        if theirs not in options:
            continue
        if ours in options:
            raise ConfigError(
                f"both {ours!r} and Dramatiq's {theirs!r} are set, which mean the same;"
                " set one of them",
                field=theirs,
            )
        found[ours] = options[theirs]
    retries = options.get("max_retries")
    if retries is not None:
        found["max_attempts"] = check_int("max_retries", retries, minimum=0, error=ConfigError) + 1
    return found


def _capped(overrides: dict[str, Any], config: RetryConfig) -> dict[str, Any]:
    """``overrides``, with an inherited ``base_delay`` no longer than a given ``max_delay``
    and a given ``base_delay`` no longer than an inherited ``max_delay``."""
    base, cap = overrides.get("base_delay"), overrides.get("max_delay")
    if (base is None) == (cap is None):
        return overrides
    if isinstance(cap, int) and cap < config.base_delay:
        return {**overrides, "base_delay": cap}
    if isinstance(base, int) and base > config.max_delay:
        return {**overrides, "base_delay": config.max_delay}
    return overrides


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
