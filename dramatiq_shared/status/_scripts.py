"""The Lua scripts of :class:`~.transport.RedisTransport`, each one atomic round trip.

Key names come in as KEYS (or, for keys a script finds, as their prefix in ARGV) from
:mod:`dramatiq_shared.keys`: no script spells a key out.
"""

from __future__ import annotations

__all__ = ["APPEND", "RECLAIM"]

# KEYS: the all-stream, the imports index, the batch's ids key, its events' key, the
# unpersisted set, then a stream and a counter per event. ARGV: maxlen, timestamp, the
# batch key's TTL (ms), the TTL of kept events (ms) or 0 to keep none, the batch's
# token, then an import id and a JSON text per event. A batch whose key exists was
# appended before (its reply was lost): its ids are returned again and nothing is
# appended twice.
#
# Redis does not roll back a script that fails, so a failure halfway would leave part
# of the batch applied, and every retry would append that part again. So everything a
# write could trip over (a key of another type, a counter that is not a number or
# that fell behind its stream) is settled before the first write.
APPEND = """
local done = redis.call('GET', KEYS[3])
if done then return cjson.decode(done) end
local persist = ARGV[4] ~= '0'

local function expect(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= kind and found ~= 'none' then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind})
  end
end

expect(KEYS[1], 'stream')
expect(KEYS[2], 'zset')
if persist then expect(KEYS[5], 'zset') end
local last = {}
for i = 6, #KEYS, 2 do
  local stream, counter = KEYS[i], KEYS[i + 1]
  if not last[counter] then
    expect(stream, 'stream')
    expect(counter, 'string')
    local value = redis.call('GET', counter) or '0'
    if #value > 15 or not string.match(value, '^%d+$') then
      error({err = 'ERR ' .. counter .. ' holds ' .. value .. ', not an event id'})
    end
    local id = tonumber(value)
    if redis.call('EXISTS', stream) == 1 then
      -- A counter behind its stream (restored from an older snapshot, say) would hand
      -- out ids XADD refuses: go on after the stream's last id instead.
      local info = redis.call('XINFO', 'STREAM', stream)
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then
          id = math.max(id, tonumber(string.match(info[j + 1], '^%d+')))
        end
      end
    end
    last[counter] = id
  end
end

local ids, events = {}, {}
for i = 6, #KEYS, 2 do
  local counter = KEYS[i + 1]
  local import_id, event = ARGV[i], ARGV[i + 1]
  local id = last[counter] + 1
  last[counter] = id
  local text = string.format('%d', id)
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], text .. '-0', 'event', event)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
             'import_id', import_id, 'id', text, 'event', event)
  redis.call('ZADD', KEYS[2], ARGV[2], import_id)
  ids[#ids + 1] = id
  events[#events + 1] = event
end
for counter, id in pairs(last) do redis.call('SET', counter, string.format('%d', id)) end
local ttl = ARGV[3]
if persist then
  ttl = ARGV[4]
  redis.call('SET', KEYS[4], cjson.encode(events), 'PX', ttl)
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[5])
end
redis.call('SET', KEYS[3], cjson.encode(ids), 'PX', ttl)
return ids
"""

# KEYS: the unpersisted set. ARGV: appended before (ms), now (ms), limit, then what a
# batch's ids key and its events' key are before the token. Returns the number of
# expired batches, then the token, ids and events of each batch found, which is
# leased: its score becomes now, so no one else reclaims it for a while.
RECLAIM = """
local tokens = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local found = {0}
for _, token in ipairs(tokens) do
  local ids = redis.call('GET', ARGV[4] .. token)
  local events = redis.call('GET', ARGV[5] .. token)
  if ids and events then
    redis.call('ZADD', KEYS[1], ARGV[2], token)
    found[#found + 1] = token
    found[#found + 1] = ids
    found[#found + 1] = events
  else
    redis.call('ZREM', KEYS[1], token)
    found[1] = found[1] + 1
  end
end
return found
"""
