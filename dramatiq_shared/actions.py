"""Declaring many actors at once, all or none: action registrations.

A registration is a name, a function and actor options. :func:`register_actions`
checks every registration of a batch, and asks every middleware of the broker to check
its options, before it declares the first actor, so a refusal leaves the broker as it
was.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from .errors import ConfigError

__all__ = ["ActionRegistration", "create_action_registration", "register_actions"]

#: Options Dramatiq's actor decorator takes itself, whatever the middleware.
_DECORATOR_OPTIONS = frozenset(("queue_name", "priority"))
_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")


@dataclass(frozen=True)
class ActionRegistration:
    """An actor to declare: its name, its function and its options."""

    name: str
    fn: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)


def create_action_registration(
    name: str, fn: Callable[..., Any], **options: Any
) -> ActionRegistration:
    """A registration of ``fn`` as the actor ``name`` with ``options``."""
    return ActionRegistration(name, fn, dict(options))


def register_actions(
    broker: dramatiq.Broker, registrations: Iterable[ActionRegistration]
) -> dict[str, dramatiq.Actor[..., Any]]:
    """Declare the actors of ``registrations`` on ``broker``, all of them or none.

    Returns:
      The actors, by name.

    Raises:
      ConfigError: Before any actor is declared, when a name is blank or taken (in the
        batch or on the broker), a function is not callable, an option is unknown (the
        message lists the known ones and the middleware providing each) or refused by
        its middleware.
    """
    batch = list(registrations)
    providers = _providers(broker)
    seen: set[str] = set()
    for registration in batch:
        _check(broker, registration, seen, providers)
        seen.add(registration.name)
    actors: dict[str, dramatiq.Actor[..., Any]] = {}
    try:
        for registration in batch:
            declare = dramatiq.actor(
                actor_name=registration.name, broker=broker, **registration.options
            )
            actors[registration.name] = declare(registration.fn)
    except Exception:
        for name in actors:  # a middleware refused late: leave the broker as it was
            broker.actors.pop(name, None)
        raise
    return actors


def _providers(broker: dramatiq.Broker) -> dict[str, str]:
    providers = dict.fromkeys(_DECORATOR_OPTIONS, "dramatiq")
    for middleware in broker.middleware:
        for option in middleware.actor_options:
            providers.setdefault(option, type(middleware).__name__)
    return providers


def _check(
    broker: dramatiq.Broker,
    registration: ActionRegistration,
    seen: set[str],
    providers: Mapping[str, str],
) -> None:
    name = registration.name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError.invalid("name", name, "a non-blank string")
    if name in seen or name in broker.actors:
        raise ConfigError(f"action {name!r} is registered twice", field="name")
    if not callable(registration.fn):
        raise ConfigError.invalid(f"action {name!r}: fn", registration.fn, "a callable")
    unknown = sorted(set(registration.options) - set(providers))
    if unknown:
        known = ", ".join(f"{option} ({providers[option]})" for option in sorted(providers))
        raise ConfigError(
            f"action {name!r}: unknown option {unknown[0]!r}; known options: {known}",
            field=unknown[0],
        )
    queue = registration.options.get("queue_name", "default")
    if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
        raise ConfigError.invalid(f"action {name!r}: queue_name", queue, "a valid queue name")
    probe = types.SimpleNamespace(
        actor_name=name, fn=registration.fn, queue_name=queue, options=dict(registration.options)
    )
    for middleware in broker.middleware:
        try:
            middleware.before_declare_actor(broker, probe)  # type: ignore[arg-type]
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(f"action {name!r}: {error}", field="options") from None
