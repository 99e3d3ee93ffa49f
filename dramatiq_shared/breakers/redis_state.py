"""Breaker state in Redis, shared by every process, each transition one Lua script.

* The breaker opens exactly once when ``failure_threshold`` consecutive counted failures
  have been reported, whichever processes reported them; or, counting rates, when the
  outcome that brings the window's failure or slow-call rate to its threshold (over at
  least ``minimum_calls``) is added. A batch of outcomes is added in order, one at a
  time, so a batch opens the breaker at the same outcome as single reports would.
* After ``reset_timeout`` the first caller moves it to half-open, and at most
  ``half_open_calls`` trials run at a time across all processes, each under a lease
  that expires after ``trial_timeout``, so a trial whose worker died cannot block the
  breaker; callers refused meanwhile wait for the rest of the first lease, at most
  ``reset_timeout``. Counting rates, exactly ``half_open_calls`` trials are judged.
* Counting failures in a row, a failed trial re-opens it for twice the previous time, up
  to ``max_reset_timeout``, and ``success_threshold`` successful trials close it;
  counting rates, the trials' rates re-open or close it once all are judged.

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
from .state import Counts, Reply, Snapshot, StateUnavailableError
from .window import outcome

__all__ = ["RedisState"]

#: Entries the events stream keeps, roughly.
STREAM_LENGTH = 10_000

# KEYS: state hash, trial leases (a sorted set: token -> expiry), events stream, changes
# channel, window (counting rates: a string of outcomes, or a hash of time buckets).
# ARGV: the layout of RedisState._args below. Each transition is published as the
# breaker's name, and a closed breaker's first failure in a row as its name, a space and
# 1, for the processes that cache what a closed breaker counts (breakers/cache.py).
_PRELUDE = """
local name, token, outcomes = ARGV[1], ARGV[2], ARGV[3]
local reset_timeout = tonumber(ARGV[5])
local rates = ARGV[10] == '1'
local clock = nil
local function now()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end
local function changed(failures)
  redis.call('PUBLISH', KEYS[4], failures and (name .. ' ' .. failures) or name)
end
local function event(kind, state, remaining)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[16], '*', 'breaker', name,
             'event', kind, 'state', state, 'remaining', remaining, 'time', now())
  if kind ~= 'rejected' then changed() end
end
local function remaining()
  return math.max(0, tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') - now())
end
local function fresh()
  redis.call('DEL', KEYS[2], KEYS[5])
  if rates then
    redis.call('HSET', KEYS[1], 'trials', 0, 'trial_failed', 0, 'trial_slow', 0, 'calls', 0,
               'slow', 0)
  end
end
local function open(timeout, reopens)
  redis.call('HSET', KEYS[1], 'state', 'open', 'failures', 0, 'successes', 0,
             'opened_at', now(), 'open_until', now() + timeout, 'reopens', reopens)
  fresh()
  event('opened', 'open', timeout)
end
local function close()
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'successes', 0, 'reopens', 0)
  fresh()
  event('closed', 'closed', 0)
end
local function half_open()
  redis.call('HSET', KEYS[1], 'state', 'half-open', 'successes', 0)
  if rates then redis.call('HSET', KEYS[1], 'trials', 0, 'trial_failed', 0, 'trial_slow', 0) end
  event('half-open', 'half-open', 0)
end
local function reopen()
  local reopens = tonumber(redis.call('HGET', KEYS[1], 'reopens') or '0') + 1
  local timeout = math.min(tonumber(ARGV[6]), reset_timeout * 2 ^ reopens)
  open(timeout, reopens)
  return {'open', timeout, 'half-open'}
end
local function leases()
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now())
  return redis.call('ZCARD', KEYS[2])
end
local function holds_trial()
  if token == '' then return false end
  local expiry = redis.call('ZSCORE', KEYS[2], token)
  return expiry and tonumber(expiry) > now()
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function unmoved()
  if state == 'open' then return {'open', remaining(), ''} end
  return {'half-open', 0, ''}
end
"""

# Counting rates: the window and the rule of breakers/window.py.
_WINDOW = """
local failure_rate, slow_rate = tonumber(ARGV[14]), tonumber(ARGV[15])
local size = tonumber(ARGV[12])
local width = math.floor(size / 10)
local function over(calls, failed, slow, minimum)
  if calls == 0 or calls < minimum then return false end
  return (failure_rate ~= nil and 100 * failed >= failure_rate * calls)
      or (slow_rate ~= nil and 100 * slow >= slow_rate * calls)
end
local function is_failed(code) return code == 'f' or code == 'F' end
local function is_slow(code) return code == 'S' or code == 'F' end
-- The window's counts: those of a count window's string, or the sums of a time window's
-- last 10 buckets (fields '<bucket>c', '<bucket>f', '<bucket>s'), older ones dropped.
local function window_counts(kept)
  if ARGV[11] == 'count' then
    local _, failed = string.gsub(kept, '[fF]', '')
    local _, slow = string.gsub(kept, '[SF]', '')
    return #kept, failed, slow
  end
  local oldest = math.floor(now() / width) - 9
  local totals = {c = 0, f = 0, s = 0}
  local fields = redis.call('HGETALL', KEYS[5])
  for i = 1, #fields, 2 do
    local field = fields[i]
    if tonumber(string.sub(field, 1, -2)) < oldest then
      redis.call('HDEL', KEYS[5], field)
    else
      local kind = string.sub(field, -1)
      totals[kind] = totals[kind] + tonumber(fields[i + 1])
    end
  end
  return totals.c, totals.f, totals.s
end
local function kept_outcomes()
  if ARGV[11] == 'count' then return redis.call('GET', KEYS[5]) or '' end
  return ''
end
"""

# ARGV[2]: the token
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
local taken = leases()
if rates then taken = taken + tonumber(redis.call('HGET', KEYS[1], 'trials') or '0') end
if taken < tonumber(ARGV[9]) then
  redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[8]), token)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[8]))
  return {'trial', 0, moved}
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
local wait = reset_timeout
if first then wait = math.max(0, math.min(tonumber(first) - now(), reset_timeout)) end
event('rejected', 'half-open', wait)
return {'busy', wait, moved}
"""

# Failures in a row. ARGV[2]: the token
_FAILURE = """
if state == 'closed' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if failures == 1 then changed(1) end
  if failures < tonumber(ARGV[4]) then return {'closed', failures, ''} end
  open(reset_timeout, 0)
  return {'open', reset_timeout, 'closed'}
end
if state == 'half-open' and holds_trial() then return reopen() end
return unmoved()
"""

# Failures in a row. ARGV[2]: the token
_SUCCESS = """
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return {'closed', 0, ''}
end
if state == 'half-open' and holds_trial() then
  redis.call('ZREM', KEYS[2], token)
  if redis.call('HINCRBY', KEYS[1], 'successes', 1) >= tonumber(ARGV[7]) then
    close()
    return {'closed', 0, 'half-open'}
  end
  return {'half-open', 0, ''}
end
return unmoved()
"""

# Counting rates. ARGV[2]: the token, which owns the last outcome; ARGV[3]: the
# outcomes, oldest first (see breakers/window.py). Closed, each outcome enters the
# window in turn, and the first that brings a rate to its threshold opens the breaker.
_RECORD = """
if state == 'closed' then
  local count = ARGV[11] == 'count'
  -- A count window is a string of outcomes, oldest first: read and written once a batch.
  local kept = kept_outcomes()
  local calls, failed, slow = window_counts(kept)
  local all = kept .. outcomes
  local added = {c = 0, f = 0, s = 0}
  for i = 1, #outcomes do
    local code = string.sub(outcomes, i, i)
    local f, s = is_failed(code) and 1 or 0, is_slow(code) and 1 or 0
    calls, failed, slow = calls + 1, failed + f, slow + s
    if count then
      local position = #kept + i
      if position > size then
        local old = string.sub(all, position - size, position - size)
        calls = calls - 1
        if is_failed(old) then failed = failed - 1 end
        if is_slow(old) then slow = slow - 1 end
      end
    else
      added.c, added.f, added.s = added.c + 1, added.f + f, added.s + s
    end
    if over(calls, failed, slow, tonumber(ARGV[13])) then
      open(reset_timeout, 0)
      return {'open', reset_timeout, 'closed', calls, failed, slow}
    end
  end
  if count then
    redis.call('SET', KEYS[5], string.sub(all, -size))
  else
    local bucket = math.floor(now() / width)
    for kind, n in pairs(added) do
      if n > 0 then redis.call('HINCRBY', KEYS[5], bucket .. kind, n) end
    end
    redis.call('PEXPIRE', KEYS[5], size)
  end
  -- The window's counts as of this batch, for readers of the hash (the relay's page).
  redis.call('HSET', KEYS[1], 'failures', failed, 'calls', calls, 'slow', slow)
  return {'closed', failed, '', calls, failed, slow}
end
if state == 'half-open' and holds_trial() then
  redis.call('ZREM', KEYS[2], token)
  local code = string.sub(outcomes, -1)
  local f, s = is_failed(code) and 1 or 0, is_slow(code) and 1 or 0
  local trials = redis.call('HINCRBY', KEYS[1], 'trials', 1)
  local trial_failed = redis.call('HINCRBY', KEYS[1], 'trial_failed', f)
  local trial_slow = redis.call('HINCRBY', KEYS[1], 'trial_slow', s)
  redis.call('HINCRBY', KEYS[1], 'successes', 1 - f)
  if trials < tonumber(ARGV[9]) then return {'half-open', 0, ''} end
  if over(trials, trial_failed, trial_slow, trials) then return reopen() end
  close()
  return {'closed', 0, 'half-open'}
end
return unmoved()
"""

# ARGV[2]: the token
_RELEASE = """
if holds_trial() then redis.call('ZREM', KEYS[2], token) end
return {state, 0, ''}
"""

_READ = """
local fields = redis.call('HMGET', KEYS[1], 'failures', 'successes')
local failures, calls, slow = tonumber(fields[1] or '0'), 0, 0
if rates and state == 'closed' then calls, failures, slow = window_counts(kept_outcomes()) end
local wait = 0
if state == 'open' then wait = remaining() end
return {state, failures, tonumber(fields[2] or '0'), wait, calls, slow}
"""

# ARGV[2]: the target state. A forced state starts afresh: counts reset, leases dropped.
_FORCE = """
local target = token
if target == 'open' then open(reset_timeout, 0)
elseif target == 'closed' then close()
else
  redis.call('DEL', KEYS[2])
  half_open()
end
local moved = ''
if state ~= target then moved = state end
local wait = 0
if target == 'open' then wait = reset_timeout end
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
        self._rates = config.counts_rates
        self._name = name
        self._keys = [
            keys.breaker(name),
            keys.breaker_trials(name),
            keys.breaker_events,
            keys.breaker_changes,
            keys.breaker_window(name, config.window),
        ]
        # Every script takes the same arguments; the 2nd and 3rd vary by call.
        self._args: list[Any] = [
            name,
            "",
            "",
            config.failure_threshold,
            config.reset_timeout,
            config.max_reset_timeout or config.reset_timeout,
            config.success_threshold,
            config.trial_timeout,
            config.half_open_calls,
            int(self._rates),
            config.window,
            config.window_size,
            config.window_minimum,
            _threshold(config.failure_rate_threshold),
            _threshold(config.slow_call_rate_threshold),
            STREAM_LENGTH,
        ]
        self._outage = outage_of(client, "Circuit breakers", "they follow their fallback")
        # register_script only hashes the source: no round trip until a script runs.
        self._scripts = {
            op: client.register_script(_PRELUDE + _WINDOW + body)
            for op, body in (
                ("acquire", _ACQUIRE),
                ("failure", _FAILURE),
                ("success", _SUCCESS),
                ("record", _RECORD),
                ("release", _RELEASE),
                ("read", _READ),
                ("force", _FORCE),
            )
        }

    @property
    def counts_rates(self) -> bool:
        """Whether the breaker counts rates over a window (see :meth:`record`)."""
        return self._rates

    def acquire(self, token: str) -> Reply:
        return _reply(self._run("acquire", token))

    def record_failure(self, token: str | None, *, slow: bool = False) -> Reply:
        if self._rates:
            return self.record(outcome(failed=True, slow=slow), token)
        return _reply(self._run("failure", token or ""))

    def record_success(self, token: str | None, *, slow: bool = False) -> Reply:
        if self._rates:
            return self.record(outcome(failed=False, slow=slow), token)
        return _reply(self._run("success", token or ""))

    def record(self, outcomes: str, token: str | None) -> Reply:
        """Counting rates: add ``outcomes`` (oldest first, see
        :mod:`~dramatiq_shared.breakers.window`) to the window in one round trip;
        ``token``, when given, owns the last of them."""
        return _reply(self._run("record", token or "", outcomes))

    def release(self, token: str) -> None:
        self._run("release", token)

    def read(self) -> Snapshot:
        state, failures, successes, remaining, calls, slow = self._run("read")
        return Snapshot(
            text(state), int(failures), int(successes), int(remaining), int(calls), int(slow)
        )

    def force(self, state: str) -> Reply:
        return _reply(self._run("force", state))

    def _run(self, op: str, token: str = "", outcomes: str = "") -> Any:
        if self._outage.skip():
            raise StateUnavailableError(f"Redis is unreachable (breaker {self._name!r})")
        args = self._args.copy()
        args[1], args[2] = token, outcomes
        try:
            reply = self._scripts[op](keys=self._keys, args=args)
        except redis.RedisError as error:
            self._outage.failed(error)
            raise StateUnavailableError(f"Redis is unreachable (breaker {self._name!r})") from error
        self._outage.answered()
        return reply


def _threshold(rate: float | None) -> str:
    return "" if rate is None else repr(rate)


def _reply(reply: Sequence[Any]) -> Reply:
    window = Counts(int(reply[3]), int(reply[4]), int(reply[5])) if len(reply) > 3 else None
    return Reply(text(reply[0]), int(reply[1]), text(reply[2]), window)
