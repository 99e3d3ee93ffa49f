"""A retry budget in Redis, shared by every process: each spend one Lua script.

The budget's hash holds a count of successes (``s<n>``) and of retries (``r<n>``) per
time bucket ``n`` (Redis's clock in milliseconds // the bucket's width). A spend counts
the window, admits the retry when it fits and counts it, atomically, whichever
processes spend at once; it drops the buckets past the window. The key lives two
windows past its last new bucket, so a budget nobody uses leaves nothing behind.

Successes cost no command each. A process adds them up and sends them in one call
when :data:`FLUSH_COUNT` are waiting, when the oldest has waited :data:`FLUSH_AFTER`
seconds (the :class:`~dramatiq_shared.budgets.Budgets` thread looks every 100 ms), or
with its next spend or read. So the successes another process sees are at most
``FLUSH_AFTER`` + 0.1 s stale, and fewer by at most ``FLUSH_COUNT - 1`` a process:
a stale count only ever admits fewer retries, never more. A flush of successes alone
names its bucket by Redis's clock as the process last learnt it (the offset from
``time.monotonic()`` each reply carries), so it costs Redis two commands (EVALSHA,
HINCRBY) and, once a bucket fleet-wide, two more (PEXPIRE, HDEL of buckets past the
window).

An unreachable Redis raises
:class:`~dramatiq_shared.budgets.state.BudgetUnavailableError` (the middleware lets the
retry run); the outage is logged once, as the breakers' is, and successes counted
meanwhile are dropped.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from .._redis import outage_of, text
from ..config import RetryBudgetConfig
from ..config.budget import BUCKETS
from ..keys import Keys
from .state import BudgetReply, BudgetUnavailableError

__all__ = ["FLUSH_AFTER", "FLUSH_COUNT", "RedisBudgetState"]

#: Successes waiting that make the next one send them.
FLUSH_COUNT = 100
#: Seconds the oldest waiting success may wait before it is sent.
FLUSH_AFTER = 1.0

# KEYS: the budget's hash. ARGV: bucket width (ms), buckets before the current one,
# ratio, minimum a window, successes to add, mode ('add', 'spend' or 'read'), Redis's
# time in ms as the caller estimates it ('' to ask TIME), the key's ttl (ms).
_SCRIPT = """
local width, buckets = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = tonumber(ARGV[7])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local current = math.floor(now / width)
local oldest = current - buckets
local added = tonumber(ARGV[5])
if added > 0 and redis.call('HINCRBY', KEYS[1], 's' .. current, added) == added then
  -- The bucket's first count, once a bucket fleet-wide: renew the key's life and drop
  -- what left the window (every bucket the key can still hold past it).
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  local stale = {}
  for b = oldest - 3 * buckets, oldest - 1 do
    stale[#stale + 1] = 's' .. b
    stale[#stale + 1] = 'r' .. b
  end
  redis.call('HDEL', KEYS[1], unpack(stale))
end
if ARGV[6] == 'add' then return {0, 0, '0', 0, now} end
local successes, retries, first = 0, 0, nil
local flat = redis.call('HGETALL', KEYS[1])
local stale = {}
for i = 1, #flat, 2 do
  local bucket = tonumber(string.sub(flat[i], 2))
  if bucket < oldest then
    stale[#stale + 1] = flat[i]
  elseif string.sub(flat[i], 1, 1) == 's' then
    successes = successes + tonumber(flat[i + 1])
  else
    retries = retries + tonumber(flat[i + 1])
    if not first or bucket < first then first = bucket end
  end
end
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
local allowance = tonumber(ARGV[3]) * successes + tonumber(ARGV[4])
local admitted = 0
if ARGV[6] == 'spend' and retries + 1 <= allowance then
  admitted = 1
  retries = retries + 1
  if redis.call('HINCRBY', KEYS[1], 'r' .. current, 1) == 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[8])
  end
  if not first then first = current end
end
local wait = 0
if first then wait = math.max(1, (first + buckets + 1) * width - now) end
return {admitted, retries, tostring(allowance), wait, now}
"""


class RedisBudgetState:
    """One retry budget's counts in Redis (see the module's docstring).

    Parameters:
      client: The Redis client. Nothing is sent to it until the first flush or spend.
      name: The budget's name.
      config: Its settings.
      keys: The key layout. Default ``Keys()``.
    """

    def __init__(
        self, client: redis.Redis, name: str, config: RetryBudgetConfig, keys: Keys | None = None
    ) -> None:
        self._name = name
        self._key = (keys or Keys()).retry_budget(name)
        self._settings = (
            config.bucket,
            BUCKETS,
            repr(config.ratio),
            repr(config.minimum * config.window / 1000),
        )
        self._ttl = 2 * config.window
        # register_script only hashes the source: no round trip until it runs.
        self._script = client.register_script(_SCRIPT)
        self._outage = outage_of(client, "Retry budgets", "they let every retry run")
        self._lock = threading.Lock()
        self._pending = 0
        self._since = 0.0
        #: Redis's clock less time.monotonic(), in ms, as the last reply told it.
        self._offset: float | None = None

    def add_successes(self, count: int) -> bool:
        with self._lock:
            if not self._pending:
                self._since = time.monotonic()
            self._pending += count
            return self._pending >= FLUSH_COUNT

    def due(self) -> bool:
        with self._lock:
            return self._pending > 0 and time.monotonic() - self._since >= FLUSH_AFTER

    def flush(self) -> None:
        pending = self._take()
        if pending:
            self._run(pending, "add")

    def spend(self) -> BudgetReply:
        return self._reply(self._run(self._take(), "spend"))

    def read(self) -> BudgetReply:
        return self._reply(self._run(self._take(), "read"))

    def _take(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, 0
            return pending

    def _run(self, successes: int, mode: str) -> Any:
        if self._outage.skip():
            raise BudgetUnavailableError(f"Redis is unreachable (retry budget {self._name!r})")
        # A flush of successes alone trusts the clock it learnt; a spend asks Redis's.
        now = "" if mode != "add" or self._offset is None else int(self._now())
        try:
            reply = self._script(
                keys=[self._key], args=[*self._settings, successes, mode, now, self._ttl]
            )
        except redis.RedisError as error:
            self._outage.failed(error)
            raise BudgetUnavailableError(
                f"Redis is unreachable (retry budget {self._name!r})"
            ) from error
        self._outage.answered()
        self._offset = int(reply[4]) - time.monotonic() * 1000
        return reply

    def _now(self) -> float:
        assert self._offset is not None
        return time.monotonic() * 1000 + self._offset

    @staticmethod
    def _reply(reply: Any) -> BudgetReply:
        return BudgetReply(bool(reply[0]), int(reply[1]), float(text(reply[2])), int(reply[3]))
