"""Breaker state in Redis, shared by every process, each transition one Lua script.

* The breaker opens exactly once when ``failure_threshold`` consecutive counted failures
  have been reported, whichever processes reported them.
* After ``reset_timeout`` the first caller moves it to half-open, and exactly one trial
  runs at a time across all processes, under a lease that expires after
  ``trial_timeout``, so a trial whose worker died cannot block the breaker; callers
  refused meanwhile wait for the rest of the lease, at most ``reset_timeout``.
* A failed trial re-opens it for twice the previous time, up to ``max_reset_timeout``;
  ``success_threshold`` successful trials close it.

Time is Redis's clock, so all processes agree on it. Every transition is appended to
the events stream, for the relay, and published on the changes channel with a closed
breaker's first failure, for :mod:`~dramatiq_shared.breakers.cache`. Keys come from
:class:`~dramatiq_shared.keys.Keys`.

An unreachable Redis raises :class:`StateUnavailableError`. The first failure of an outage
is logged as a warning and the first answer after it as an info, once per client
whatever the number of breakers; meanwhile Redis is asked again only once a second, so
a lost server does not cost each call a connect timeout (and the client's retries).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .._redis import outage_of, text
from ..config import CircuitBreakerConfig
from ..keys import Keys
from .state import Reply, Snapshot, StateUnavailableError

__all__ = ["RedisState"]

#: Entries the events stream keeps, roughly.
STREAM_LENGTH = 10_000

# KEYS: state hash, trial lease, events stream, changes channel. ARGV: name first,
# stream length last. Each transition is published as the breaker's name, and a closed
# breaker's first failure as its name, a space and 1, for the processes that cache
# what a closed breaker counts (breakers/cache.py).
_PRELUDE = """
local clock = nil
local function now()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
local function changed(failures)
  redis.call('PUBLISH', KEYS[4], failures and (ARGV[1] .. ' ' .. failures) or ARGV[1])
end
local function event(kind, state, remaining)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[#ARGV], '*', 'breaker', ARGV[1],
             'event', kind, 'state', state, 'remaining', remaining, 'time', now())
  if kind ~= 'rejected' then changed() end
end
local function remaining()
  return math.max(0, tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') - now())
end
local function open(timeout, reopens)
  redis.call('HSET', KEYS[1], 'state', 'open', 'failures', 0, 'successes', 0,
             'opened_at', now(), 'open_until', now() + timeout, 'reopens', reopens)
  redis.call('DEL', KEYS[2])
  event('opened', 'open', timeout)
end
local function close()
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'successes', 0, 'reopens', 0)
  redis.call('DEL', KEYS[2])
  event('closed', 'closed', 0)
end
local function half_open()
  redis.call('HSET', KEYS[1], 'state', 'half-open', 'successes', 0)
  event('half-open', 'half-open', 0)
end
local function holds_trial(token)
  return token ~= '' and redis.call('GET', KEYS[2]) == token
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
"""

# ARGV: name, token, lease ttl, reset timeout, stream length
_ACQUIRE = """
if state == 'closed' then
  return {'closed', tonumber(redis.call('HGET', KEYS[1], 'failures') or '0'), ''}
end
local moved = ''
if state == 'open' then
  local wait = remaining()
  if wait > 0 then
    event('rejected', 'open', wait)
    return {'open', wait, ''}
  end
  half_open()
  moved = 'open'
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'trial', 0, moved} end
local wait = math.max(0, math.min(redis.call('PTTL', KEYS[2]), tonumber(ARGV[4])))
event('rejected', 'half-open', wait)
return {'busy', wait, moved}
"""

# ARGV: name, token, failure threshold, reset timeout, max reset timeout, stream length
_FAILURE = """
if state == 'closed' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if failures == 1 then changed(1) end
  if failures < tonumber(ARGV[3]) then return {'closed', failures, ''} end
  open(tonumber(ARGV[4]), 0)
  return {'open', tonumber(ARGV[4]), 'closed'}
end
if state == 'half-open' and holds_trial(ARGV[2]) then
  local reopens = tonumber(redis.call('HGET', KEYS[1], 'reopens') or '0') + 1
  local timeout = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ reopens)
  open(timeout, reopens)
  return {'open', timeout, 'half-open'}
end
if state == 'open' then return {'open', remaining(), ''} end
return {'half-open', 0, ''}
"""

# ARGV: name, token, success threshold, stream length
_SUCCESS = """
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return {'closed', 0, ''}
end
if state == 'half-open' and holds_trial(ARGV[2]) then
  redis.call('DEL', KEYS[2])
  if redis.call('HINCRBY', KEYS[1], 'successes', 1) >= tonumber(ARGV[3]) then
    close()
    return {'closed', 0, 'half-open'}
  end
  return {'half-open', 0, ''}
end
if state == 'open' then return {'open', remaining(), ''} end
return {'half-open', 0, ''}
"""

# ARGV: name, token, stream length
_RELEASE = """
if holds_trial(ARGV[2]) then redis.call('DEL', KEYS[2]) end
return {state, 0, ''}
"""

# ARGV: name, stream length
_READ = """
local fields = redis.call('HMGET', KEYS[1], 'failures', 'successes')
local wait = 0
if state == 'open' then wait = remaining() end
return {state, tonumber(fields[1] or '0'), tonumber(fields[2] or '0'), wait}
"""

# ARGV: name, target state, reset timeout, stream length. A forced state starts
# afresh: counts reset and any trial's lease dropped.
_FORCE = """
local target = ARGV[2]
if target == 'open' then open(tonumber(ARGV[3]), 0)
elseif target == 'closed' then close()
else
  redis.call('DEL', KEYS[2])
  half_open()
end
local moved = ''
if state ~= target then moved = state end
local wait = 0
if target == 'open' then wait = tonumber(ARGV[3]) end
return {target, wait, moved}
"""


class RedisState:
    """One breaker's state in Redis (see the module's docstring).

    Parameters:
      client: The Redis client. Nothing is sent to it until the first operation.
      name: The breaker's name.
      config: Its settings.
      keys: The key layout. Default ``Keys()``.
    """

    def __init__(
        self, client: redis.Redis, name: str, config: CircuitBreakerConfig, keys: Keys | None = None
    ) -> None:
        keys = keys or Keys()
        self._config = config
        self._name = name
        self._keys = [
            keys.breaker(name),
            keys.breaker_trial(name),
            keys.breaker_events,
            keys.breaker_changes,
        ]
        self._outage = outage_of(client, "Circuit breakers", "they follow their fallback")
        # register_script only hashes the source: no round trip until a script runs.
        self._scripts = {
            op: client.register_script(_PRELUDE + body)
            for op, body in (
                ("acquire", _ACQUIRE),
                ("failure", _FAILURE),
                ("success", _SUCCESS),
                ("release", _RELEASE),
                ("read", _READ),
                ("force", _FORCE),
            )
        }

    def acquire(self, token: str) -> Reply:
        config = self._config
        return _reply(self._run("acquire", token, config.trial_timeout, config.reset_timeout))

    def record_failure(self, token: str | None) -> Reply:
        config = self._config
        reply = self._run(
            "failure",
            token or "",
            config.failure_threshold,
            config.reset_timeout,
            config.max_reset_timeout or config.reset_timeout,
        )
        return _reply(reply)

    def record_success(self, token: str | None) -> Reply:
        return _reply(self._run("success", token or "", self._config.success_threshold))

    def release(self, token: str) -> None:
        self._run("release", token)

    def read(self) -> Snapshot:
        state, failures, successes, remaining = self._run("read")
        return Snapshot(text(state), int(failures), int(successes), int(remaining))

    def force(self, state: str) -> Reply:
        return _reply(self._run("force", state, self._config.reset_timeout))

    def _run(self, op: str, *args: Any) -> Any:
        if self._outage.skip():
            raise StateUnavailableError(f"Redis is unreachable (breaker {self._name!r})")
        try:
            reply = self._scripts[op](keys=self._keys, args=[self._name, *args, STREAM_LENGTH])
        except redis.RedisError as error:
            self._outage.failed(error)
            raise StateUnavailableError(f"Redis is unreachable (breaker {self._name!r})") from error
        self._outage.answered()
        return reply


def _reply(reply: Sequence[Any]) -> Reply:
    return Reply(text(reply[0]), int(reply[1]), text(reply[2]))
