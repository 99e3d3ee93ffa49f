"""Circuit breakers whose state every worker process shares, with pybreaker's surface.

:class:`SharedCircuitBreaker` offers what pybreaker users know: ``call``, decorator use,
``calling()``, ``with breaker:``, ``name``, ``fail_max``, ``reset_timeout``,
``success_threshold``, ``current_state``, ``fail_counter``, ``open()``, ``close()``,
``half_open()`` and ``pybreaker.CircuitBreakerListener`` listeners. It is not a
``pybreaker.CircuitBreaker``: pybreaker's state machine reads and moves its storage in
separate steps, lets every process that sees the timeout pass send a trial, and reads
Redis as soon as it is built. Here the breaker holds a state store
(:class:`~dramatiq_shared.breakers.state.BreakerState`) and each transition is one
atomic operation of that store: a Lua script in Redis
(:mod:`~dramatiq_shared.breakers.redis_state`, which describes the guarantees), or a locked
method in this process for embedded runs (:mod:`~dramatiq_shared.breakers.local`).

A breaker counts failures in a row, as pybreaker does, or, given a
``failure_rate_threshold`` or a ``slow_call_duration``, the rates of failed and slow
calls over a sliding window of calls or of time, as resilience4j does
(:mod:`~dramatiq_shared.breakers.window`); either way its state is shared.

The wrapped call runs outside any lock. A breaker on its own costs one Redis round trip
per call, to ask; the success of a healthy (closed, no failures) breaker costs none.
Those of :class:`Breakers` cost none at all while healthy: a process-local view, kept
fresh by pub/sub, answers, and a breaker counting rates sends its successes in batches
(:mod:`~dramatiq_shared.breakers.cache`).

When Redis cannot be reached, at construction or at any call, the breaker follows its
``fallback``: ``"closed"`` (the default) lets calls through unrecorded, ``"open"``
refuses them. Nothing raises out of ``Breakers[...]``, ``acquire``, ``record_*``,
``release`` or ``current_state``; the outage is logged once, and the breaker carries on
as before once Redis answers.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pybreaker
import redis
from loguru import logger

from .._checks import check_name
from ..config import CircuitBreakerConfig
from ..errors import ConfigError
from ..keys import DEFAULT_NAMESPACE, Keys
from ..metrics import BREAKER_REJECTED, BREAKER_STATE, BREAKER_TRANSITIONS, STATE_VALUES
from .breaker import SharedCircuitBreaker, Ticket, Verdict
from .cache import CachedState, View
from .redis_state import RedisState
from .state import StateUnavailableError

__all__ = [
    "BREAKER_STATES",
    "Breakers",
    "SharedCircuitBreaker",
    "StateUnavailableError",
    "Ticket",
    "Verdict",
    "check_breaker_name",
]

BREAKER_STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)


class _Transitions(pybreaker.CircuitBreakerListener):
    """Logs every transition and rejection and counts them for the metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def _count(self, breaker: str, event: str) -> None:
        with self._lock:
            self.counts[(breaker, event)] += 1

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state else "?"
        self._count(cb.name or "", new_state.name)
        BREAKER_TRANSITIONS.labels(cb.name or "", new_state.name).inc()
        BREAKER_STATE.labels(cb.name or "").set(STATE_VALUES[new_state.name])
        log = logger.warning if new_state.name == pybreaker.STATE_OPEN else logger.info
        log("Circuit breaker {} moved from {} to {}", cb.name, old, new_state.name)

    def rejected(self, cb: SharedCircuitBreaker) -> None:
        self._count(cb.name, "rejected")
        BREAKER_REJECTED.labels(cb.name).inc()
        logger.debug("Circuit breaker {} refused a call", cb.name)


class Breakers(Mapping[str, SharedCircuitBreaker]):
    """The named breakers of a process: ``breakers["usda-api"]``, made on first use.

    Making one sends nothing to Redis, so it works while Redis is down. Their states
    share one view of which breakers are healthy, whose subscriber thread starts with
    the first call (in each process, after a fork too); :meth:`close` stops it.

    Parameters:
      client: The Redis client holding every breaker's state; None keeps it in this
        process (embedded runs).
      configs: Settings per breaker name.
      default: Settings of any other name. Default ``CircuitBreakerConfig()``.
      namespace: Prefix of the Redis keys. Default ``"dramatiq_shared"``.
      fallback: ``"closed"`` or ``"open"`` while Redis is unreachable. Default ``"closed"``.

    Raises:
      ConfigError: When a config or the fallback is invalid.
    """

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        configs: Mapping[str, CircuitBreakerConfig | Mapping[str, Any]] | None = None,
        default: CircuitBreakerConfig | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        fallback: str = "closed",
    ) -> None:
        if fallback not in ("closed", "open"):
            raise ConfigError.invalid("fallback", fallback, "'closed' or 'open'")
        self.client = client
        self.namespace = namespace
        self.fallback = fallback
        self.default = default or CircuitBreakerConfig()
        self.configs = {
            check_breaker_name(name): _config_of(name, config)
            for name, config in (configs or {}).items()
        }
        self.transitions = _Transitions()
        self._listeners: list[pybreaker.CircuitBreakerListener] = [self.transitions]
        self._keys = Keys(namespace)
        self._view = View(client, self._keys) if client is not None else None
        self._breakers: dict[str, SharedCircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> SharedCircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    breaker = self._breakers[name] = self._make(check_breaker_name(name))
        return breaker

    def _make(self, name: str) -> SharedCircuitBreaker:
        config = self.configs.get(name, self.default)
        state = None
        if self.client is not None and self._view is not None:
            state = CachedState(name, RedisState(self.client, name, config, self._keys), self._view)
        return SharedCircuitBreaker(
            name,
            config,
            self.client,
            namespace=self.namespace,
            listeners=self._listeners,
            fallback=self.fallback,
            state=state,
        )

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """Tell ``listener`` of the calls and transitions of every breaker, those made
        already and those made later."""
        with self._lock:
            self._listeners.append(listener)
            for breaker in self._breakers.values():
                breaker.add_listener(listener)

    def close(self) -> None:
        """Stop the view's subscriber; the breakers then ask Redis at every call."""
        if self._view is not None:
            self._view.stop()

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._breakers))

    def __len__(self) -> int:
        return len(self._breakers)


def _config_of(name: str, config: CircuitBreakerConfig | Mapping[str, Any]) -> CircuitBreakerConfig:
    """The config of breaker ``name``; an error in it names the breaker."""
    if isinstance(config, CircuitBreakerConfig):
        return config
    try:
        return CircuitBreakerConfig.from_mapping(config)
    except ConfigError as error:
        field = f"breakers[{name!r}].{error.field}" if error.field else f"breakers[{name!r}]"
        raise ConfigError(f"breakers[{name!r}]: {error}", field=field) from None


def check_breaker_name(name: Any) -> str:
    """Return ``name`` if it can name a breaker: 1 to 100 printable characters, no spaces."""
    return check_name("breaker", name)
