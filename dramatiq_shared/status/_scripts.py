"""The Lua scripts of :class:`~.transport.RedisTransport`, each one atomic round trip.

Key names come in as KEYS (or, for keys a script finds, as their prefix in ARGV) from
:mod:`dramatiq_shared.keys`: no script spells a key out.
"""

from __future__ import annotations

__all__ = ["APPEND", "RECLAIM"]

# KEYS: the all-stream, the imports index, the batch's ids key, its events' key, the
# unpersisted set, the last-ids hash, then the stream of each import in the batch.
# ARGV: maxlen, timestamp,
# the batch key's TTL (ms), the TTL of kept events (ms) or 0 to keep none, the batch's
# token, the number of imports, their ids (in the order of their streams), then per
# event the number of its import and its JSON text. A batch whose key exists was
# appended before (its reply was lost): its ids are returned again and nothing is
# appended twice.
#
# Each event is one entry of its import's stream, with id ``{event id}-0``. The
# imports' last event ids are kept in one hash, read and written once a batch (an
# import it lacks, one streamed before the hash existed, is read from its stream's
# last-generated-id, which trimming and XDEL leave as they are). The whole batch is
# one entry of the all-stream (fields ``i1``, ``d1``, ``e1``, ``i2``...: import id,
# event id, JSON) and one ZADD of the imports index, so a batch costs a dozen
# commands, plus one per event.
#
# Redis does not roll back a script that fails, so a failure halfway would leave part
# of the batch applied, and every retry would append that part again. So everything a
# write could trip over (a key of another type) is found before the first write.
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
expect(KEYS[6], 'hash')
local imports = tonumber(ARGV[6])
local known = {}
if imports > 0 then known = redis.call('HMGET', KEYS[6], unpack(ARGV, 7, 6 + imports)) end
local last = {}
for j = 1, imports do
  if known[j] then
    last[j] = tonumber(known[j])
  else
    local info = redis.pcall('XINFO', 'STREAM', KEYS[6 + j])
    last[j] = 0
    if info.err then
      if not string.find(info.err, 'no such key', 1, true) then
        error({err = 'WRONGTYPE ' .. KEYS[6 + j] .. ' is not a stream: ' .. info.err})
      end
    else
      for k = 1, #info, 2 do
        if info[k] == 'last-generated-id' then
          last[j] = tonumber(string.match(info[k + 1], '^%d+'))
        end
      end
    end
  end
end

local ids, events = {}, {}
local all = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*'}
for i = 7 + imports, #ARGV, 2 do
  local j = tonumber(ARGV[i])
  local event = ARGV[i + 1]
  local id = last[j] + 1
  last[j] = id
  local text = string.format('%d', id)
  redis.call('XADD', KEYS[6 + j], 'MAXLEN', '~', ARGV[1], text .. '-0', 'event', event)
  local n = #ids + 1
  ids[n] = id
  events[n] = event
  all[#all + 1] = 'i' .. n
  all[#all + 1] = ARGV[6 + j]
  all[#all + 1] = 'd' .. n
  all[#all + 1] = text
  all[#all + 1] = 'e' .. n
  all[#all + 1] = event
end
redis.call(unpack(all))
local index = {'ZADD', KEYS[2]}
for j = 1, imports do
  index[#index + 1] = ARGV[2]
  index[#index + 1] = ARGV[6 + j]
end
redis.call(unpack(index))
if imports > 0 then
  local ids_of = {'HSET', KEYS[6]}
  for j = 1, imports do
    ids_of[#ids_of + 1] = ARGV[6 + j]
    ids_of[#ids_of + 1] = last[j]
  end
  redis.call(unpack(ids_of))
end
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
