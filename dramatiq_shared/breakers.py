"""Circuit breakers whose state every worker process shares, built on pybreaker.

:class:`SharedCircuitBreaker` is a ``pybreaker.CircuitBreaker``: the same
constructor settings, exclusion list, ``success_threshold``, listeners, decorator and
``calling()`` context manager. What it changes is where the state lives and how it
moves. pybreaker's own ``CircuitRedisStorage`` checks the threshold and switches to
open in separate steps, lets every process that sees the timeout pass send its own
half-open trial, and holds a lock for the whole wrapped call. Here each transition is
one Lua script run atomically by Redis:

* the breaker opens exactly once when ``failure_threshold`` consecutive counted
  failures have been reported, whichever processes reported them;
* after ``reset_timeout`` the first caller moves it to half-open, and exactly one trial
  runs at a time across all processes, under a lease that expires after
  ``trial_timeout`` so a trial whose worker died cannot block the breaker; callers
  refused meanwhile are told to wait for the rest of the lease, at most
  ``reset_timeout``;
* a failed trial re-opens it for twice the previous time, up to ``max_reset_timeout``;
  ``success_threshold`` successful trials close it.

The wrapped call runs outside any lock. A healthy (closed, no failures) breaker costs
one Redis round trip per call, to read the state; the success after it costs none.

Redis keys, under ``namespace`` (default ``dramatiq_shared``):

=====================================  ============================================
``{ns}:breaker:{name}``                hash: state, failures, successes, opened_at,
                                       open_until, reopens (times are Redis's clock)
``{ns}:breaker:{name}:trial``          the half-open trial lease (a token, with TTL)
``{ns}:breaker-events``                stream of transitions and rejected calls, for
                                       the relay: breaker, event, state, remaining
=====================================  ============================================

When Redis cannot be reached the breaker follows its ``fallback``: ``"closed"`` (the
default) lets calls through unrecorded and logs a warning at most once a minute;
``"open"`` refuses them. Either way it tries Redis again after a second, and carries on
as before once Redis answers.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import pybreaker
import redis
from dramatiq.middleware.shutdown import Shutdown
from loguru import logger

from ._breaker_local import LocalState, local_scripts
from ._redis import text
from .config import CircuitBreakerConfig
from .errors import CircuitOpenError, ConfigError, Defer, PermanentError
from .metrics import BREAKER_REJECTED, BREAKER_STATE, BREAKER_TRANSITIONS, STATE_VALUES

__all__ = ["BREAKER_STATES", "Breakers", "SharedCircuitBreaker", "Ticket", "Verdict"]

_T = TypeVar("_T")

BREAKER_STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)
#: Seconds between warnings that Redis is unreachable, per breaker.
_WARN_EVERY = 60.0
#: Seconds the breaker uses its fallback before asking Redis again.
_REDIS_RETRY = 1.0
#: Milliseconds a caller is told to wait when the fallback is "open".
_FALLBACK_WAIT = 5_000
#: Entries the events stream keeps, roughly.
_STREAM_LENGTH = 10_000

# Time is Redis's clock, so all processes agree on it; read only when needed, so a
# closed breaker's check is two hash reads.
_NOW = """
local clock = nil
local function now()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
local function event(kind, state, remaining)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[#ARGV], '*', 'breaker', ARGV[1],
             'event', kind, 'state', state, 'remaining', remaining, 'time', now())
end
"""

# ARGV: name, lease token, lease ttl (ms), reset timeout (ms), stream length. While a
# trial runs, other callers wait for the rest of its lease, at most reset_timeout.
_ACQUIRE = (
    _NOW
    + """
local fields = redis.call('HMGET', KEYS[1], 'state', 'failures')
local state = fields[1] or 'closed'
if state == 'closed' then return {'closed', tonumber(fields[2] or '0')} end
local moved = 0
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
  if now() < open_until then
    event('rejected', 'open', open_until - now())
    return {'open', open_until - now()}
  end
  redis.call('HSET', KEYS[1], 'state', 'half-open', 'successes', 0)
  event('half-open', 'half-open', 0)
  moved = 1
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'trial', moved}
end
local wait = math.min(redis.call('PTTL', KEYS[2]), tonumber(ARGV[4]))
if wait < 0 then wait = 0 end
event('rejected', 'half-open', wait)
return {'busy', wait}
"""
)

# ARGV: name, lease token ('' for none), failure threshold, reset timeout, max reset
# timeout, stream length
_FAILURE = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if failures < tonumber(ARGV[3]) then return {'closed', failures} end
  local timeout = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'state', 'open', 'failures', 0, 'successes', 0,
             'opened_at', now(), 'open_until', now() + timeout, 'reopens', 0)
  event('opened', 'open', timeout)
  return {'opened', timeout}
end
if state == 'half-open' and ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  local reopens = redis.call('HINCRBY', KEYS[1], 'reopens', 1)
  local timeout = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ reopens)
  redis.call('HSET', KEYS[1], 'state', 'open', 'successes', 0,
             'opened_at', now(), 'open_until', now() + timeout)
  redis.call('DEL', KEYS[2])
  event('opened', 'open', timeout)
  return {'opened', timeout}
end
if state == 'open' then
  local remaining = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') - now()
  if remaining < 0 then remaining = 0 end
  return {'open', remaining}
end
return {state, 0}
"""
)

# ARGV: name, lease token ('' for none), success threshold, stream length
_SUCCESS = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return {'closed', 0}
end
if state == 'half-open' and ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
  local successes = redis.call('HINCRBY', KEYS[1], 'successes', 1)
  if successes >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'successes', 0, 'reopens', 0)
    event('closed', 'closed', 0)
    return {'closed', 1}
  end
  return {'half-open', 0}
end
return {state, 0}
"""
)

# ARGV: lease token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Ticket:
    """A permission to call, from :meth:`SharedCircuitBreaker.acquire`.

    ``trial`` holds the lease token when this call is the half-open trial;
    ``failures`` is the failure count the breaker had when the call was allowed;
    ``unrecorded`` is set when Redis could not be asked and the fallback let it through.
    """

    trial: str | None = None
    failures: int = 0
    unrecorded: bool = False


@dataclass(frozen=True)
class Verdict:
    """What the breaker made of a finished call: its state after, and for how long it is open."""

    state: str
    remaining: int = 0

    @property
    def is_open(self) -> bool:
        return self.state == pybreaker.STATE_OPEN


def _never_counts(error: BaseException) -> bool:
    # Bad input, deliberate deferrals and shutdowns say nothing about the service.
    return isinstance(error, (PermanentError, Defer, Shutdown, CircuitOpenError))


class SharedCircuitBreaker(pybreaker.CircuitBreaker):
    """A pybreaker circuit breaker whose state lives in Redis, moved by atomic scripts.

    Use it as pybreaker's: ``breaker.call(fn, ...)``, ``@breaker``, ``with
    breaker.calling():``, or simply ``with breaker:``. A refused call raises
    :class:`~dramatiq_shared.errors.CircuitOpenError` (with ``remaining`` milliseconds)
    rather than pybreaker's ``CircuitBreakerError``. Nested use in one thread (a
    breaker-guarded actor calling through the same breaker) is one call.

    Parameters:
      name: The breaker's name; breakers of one name share state across processes.
      config: Its settings.
      client: The Redis client holding the state; None keeps it in this process (an
        embedded run: its threads share it, other processes do not).
      namespace: Prefix of the Redis keys. Default ``"dramatiq_shared"``.
      listeners: pybreaker listeners, told of calls, failures, successes and transitions.
      fallback: ``"closed"`` or ``"open"``: how to behave while Redis is unreachable.
    """

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig,
        client: redis.Redis | None,
        *,
        namespace: str = "dramatiq_shared",
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
        fallback: str = "closed",
    ) -> None:
        if fallback not in ("closed", "open"):
            raise ConfigError.invalid("fallback", fallback, "'closed' or 'open'")
        self.config = config
        key = f"{namespace}:breaker:{name}"
        self._keys = [key, f"{key}:trial", f"{namespace}:breaker-events"]
        storage: pybreaker.CircuitBreakerStorage
        if client is None:
            storage = LocalState(config)
            self._scripts: Mapping[str, Any] = local_scripts(storage)
        else:
            storage = _RedisState(client, key, config)
            self._scripts = {
                "acquire": client.register_script(_ACQUIRE),
                "failure": client.register_script(_FAILURE),
                "success": client.register_script(_SUCCESS),
                "release": client.register_script(_RELEASE),
            }
        super().__init__(
            fail_max=config.failure_threshold,
            reset_timeout=config.reset_timeout / 1000,
            success_threshold=config.success_threshold,
            exclude=[lambda error: config.is_excluded(error) or _never_counts(error)],
            listeners=listeners,
            state_storage=storage,
            name=name,
        )
        self.fallback = fallback
        self._redis_down_until = 0.0
        self._warned_at = -_WARN_EVERY
        self._local = threading.local()

    @property
    def trial_timeout(self) -> int:
        return self.config.trial_timeout

    # --- the protocol: acquire, then one of record_success / record_failure / release ---

    def acquire(self) -> Ticket:
        """Ask to make a call.

        Returns:
          A ticket to hand back with the call's outcome.

        Raises:
          CircuitOpenError: When the breaker is open, or half-open with its one trial
            already running; ``remaining`` says how long to wait.
        """
        token = uuid.uuid4().hex
        reply = self._run(
            "acquire", token, self.trial_timeout, self.config.reset_timeout, default=None
        )
        if reply is None:
            if self.fallback == "open":
                raise CircuitOpenError(self.name or "", _FALLBACK_WAIT)
            return Ticket(unrecorded=True)
        state, number = _decode(reply)
        if state == "closed":
            return Ticket(failures=number)
        if state == "trial":
            if number:
                self._notify(pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)
            return Ticket(trial=token)
        self._count_rejection()
        raise CircuitOpenError(self.name or "", number)

    def record_success(self, ticket: Ticket) -> Verdict:
        """Report that the call succeeded; may close a half-open breaker."""
        for listener in self.listeners:
            listener.success(self)
        if ticket.unrecorded or (ticket.trial is None and ticket.failures == 0):
            return Verdict(pybreaker.STATE_CLOSED)  # nothing to reset: no round trip
        reply = self._run("success", ticket.trial or "", self.success_threshold, default=None)
        if reply is None:
            return Verdict(pybreaker.STATE_CLOSED)
        state, moved = _decode(reply)
        if moved:
            self._notify(pybreaker.STATE_HALF_OPEN, pybreaker.STATE_CLOSED)
        return Verdict(state)

    def record_failure(self, ticket: Ticket, error: BaseException) -> Verdict:
        """Report that the call failed with ``error``; counted unless it is excluded.

        An excluded error neither counts nor resets the count; a trial that ends in
        one gives its lease back so the next caller tries.

        Returns:
          The breaker's state after the report, with the time it stays open.
        """
        if not self.is_system_error(error):
            self.release(ticket)
            return Verdict("not counted")
        for listener in self.listeners:
            listener.failure(self, error)
        if ticket.unrecorded:
            return Verdict(pybreaker.STATE_CLOSED)
        reply = self._run(
            "failure",
            ticket.trial or "",
            self.fail_max,
            self.config.reset_timeout,
            self.config.max_reset_timeout or self.config.reset_timeout,
            default=None,
        )
        if reply is None:
            return Verdict(pybreaker.STATE_CLOSED)
        state, number = _decode(reply)
        if state == "opened":
            previous = pybreaker.STATE_HALF_OPEN if ticket.trial else pybreaker.STATE_CLOSED
            self._notify(previous, pybreaker.STATE_OPEN)
            return Verdict(pybreaker.STATE_OPEN, number)
        return Verdict(state, number if state == pybreaker.STATE_OPEN else 0)

    def release(self, ticket: Ticket) -> None:
        """Give back a trial lease without a verdict (the call was skipped or excluded)."""
        if ticket.trial is not None:
            self._run("release", ticket.trial, default=None)

    # --- pybreaker's ways of calling ------------------------------------------------

    def call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call ``func`` through the breaker; its exceptions propagate unchanged."""
        with self:
            for listener in self.listeners:
                listener.before_call(self, func, *args, **kwargs)
            return func(*args, **kwargs)

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """A context manager: the block is the call."""
        with self:
            yield

    def __enter__(self) -> SharedCircuitBreaker:
        stack = self._stack()
        stack.append(None if stack else self.acquire())
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        ticket = self._stack().pop()
        if ticket is None:
            return  # nested in a call through this breaker: the outer one reports
        if error is None:
            self.record_success(ticket)
        else:
            self.record_failure(ticket, error)

    def _stack(self) -> list[Ticket | None]:
        stack: list[Ticket | None] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    # --- Redis, with the fallback ------------------------------------------------------

    def _run(self, script: str, *args: Any, default: Any) -> Any:
        # Every script but "release" takes the breaker's name first and the stream's
        # length last (see the scripts above).
        if script == "release":
            keys, argv = self._keys[1:2], list(args)
        else:
            keys, argv = self._keys, [self.name, *args, _STREAM_LENGTH]
        if time.monotonic() < self._redis_down_until:
            return default
        try:
            return self._scripts[script](keys=keys, args=argv)
        except redis.RedisError as error:
            self._redis_down_until = time.monotonic() + _REDIS_RETRY
            if time.monotonic() - self._warned_at >= _WARN_EVERY:
                self._warned_at = time.monotonic()
                logger.warning(
                    "Circuit breaker {} cannot reach Redis ({}: {}); behaving {} until it can",
                    self.name,
                    type(error).__name__,
                    error,
                    self.fallback,
                )
            return default

    def _notify(self, old: str, new: str) -> None:
        states = {
            pybreaker.STATE_CLOSED: pybreaker.CircuitClosedState,
            pybreaker.STATE_OPEN: pybreaker.CircuitOpenState,
            pybreaker.STATE_HALF_OPEN: pybreaker.CircuitHalfOpenState,
        }
        # notify=False: the state objects only describe; Redis already moved.
        before = states[old](self, prev_state=None, notify=False)
        after = states[new](self, prev_state=before, notify=False)
        for listener in self.listeners:
            listener.state_change(self, before, after)

    def _count_rejection(self) -> None:
        for listener in self.listeners:
            rejected = getattr(listener, "rejected", None)
            if rejected is not None:
                rejected(self)


def _decode(reply: Sequence[Any]) -> tuple[str, int]:
    state = text(reply[0])
    return state, int(reply[1])


class _RedisState(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage interface over the breaker's Redis hash.

    The breaker's own transitions go through the atomic scripts; this serves
    pybreaker's introspection (``current_state``, ``fail_counter``) and its manual
    ``open()``, ``half_open()`` and ``close()``.
    """

    def __init__(self, client: redis.Redis, key: str, config: CircuitBreakerConfig) -> None:
        super().__init__("redis")
        self._client = client
        self._key = key
        self._config = config

    def _get(self, field: str, default: str) -> str:
        value = self._client.hget(self._key, field)
        return text(value) if value is not None else default

    @property
    def state(self) -> str:
        return self._get("state", pybreaker.STATE_CLOSED)

    @state.setter
    def state(self, state: str) -> None:
        fields: dict[Any, Any] = {"state": state, "successes": 0}
        if state == pybreaker.STATE_OPEN:
            seconds, micros = self._client.time()  # Redis's clock, as the scripts use
            now = seconds * 1000 + micros // 1000
            fields.update(opened_at=now, open_until=now + self._config.reset_timeout)
        elif state == pybreaker.STATE_CLOSED:
            fields.update(failures=0, reopens=0)
        self._client.hset(self._key, mapping=fields)

    def increment_counter(self) -> None:
        self._client.hincrby(self._key, "failures", 1)

    def reset_counter(self) -> None:
        self._client.hset(self._key, "failures", 0)

    def increment_success_counter(self) -> None:
        self._client.hincrby(self._key, "successes", 1)

    def reset_success_counter(self) -> None:
        self._client.hset(self._key, "successes", 0)

    @property
    def counter(self) -> int:
        return int(self._get("failures", "0"))

    @property
    def success_counter(self) -> int:
        return int(self._get("successes", "0"))

    @property
    def opened_at(self) -> datetime | None:
        value = self._get("opened_at", "")
        return datetime.fromtimestamp(int(value) / 1000, timezone.utc) if value else None

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._client.hset(self._key, "opened_at", int(when.timestamp() * 1000))


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

    def rejected(self, cb: pybreaker.CircuitBreaker) -> None:
        self._count(cb.name or "", "rejected")
        BREAKER_REJECTED.labels(cb.name or "").inc()
        logger.debug("Circuit breaker {} refused a call", cb.name)


class Breakers(Mapping[str, SharedCircuitBreaker]):
    """The named breakers of a process: ``breakers["usda-api"]``, made on first use.

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
        namespace: str = "dramatiq_shared",
        fallback: str = "closed",
    ) -> None:
        if fallback not in ("closed", "open"):
            raise ConfigError.invalid("fallback", fallback, "'closed' or 'open'")
        self.client = client
        self.namespace = namespace
        self.fallback = fallback
        self.default = default or CircuitBreakerConfig()
        self.configs = {
            check_breaker_name(name): config
            if isinstance(config, CircuitBreakerConfig)
            else CircuitBreakerConfig.from_mapping(config)
            for name, config in (configs or {}).items()
        }
        self.transitions = _Transitions()
        self._breakers: dict[str, SharedCircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> SharedCircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(name)
                if breaker is None:
                    breaker = self._breakers[name] = SharedCircuitBreaker(
                        check_breaker_name(name),
                        self.configs.get(name, self.default),
                        self.client,
                        namespace=self.namespace,
                        listeners=[self.transitions],
                        fallback=self.fallback,
                    )
        return breaker

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._breakers))

    def __len__(self) -> int:
        return len(self._breakers)


def check_breaker_name(name: Any) -> str:
    """Return ``name`` if it can name a breaker: 1 to 100 printable characters, no spaces."""
    if not (
        isinstance(name, str) and 0 < len(name) <= 100 and name.isprintable() and " " not in name
    ):
        raise ConfigError.invalid(
            "breaker", name, "a name of 1 to 100 printable characters, no spaces"
        )
    return name
