"""The Lua scripts of the Redis broker (loaded once with ``register_script``, run by EVALSHA).

Both scripts touch only keys of one channel (one hash slot), so they work on Redis Cluster too.
A script runs atomically: no other command sees a half-done publish, and a history read sees
the position and the entries of the same instant.
"""

from __future__ import annotations

#: Publish one message.
#:
#: KEYS: meta, stream[, idempotency record]
#: ARGV: data, history size, history TTL, meta TTL, candidate epoch, publish time,
#:       idempotency TTL (0 = no key), pub/sub channel
#: Returns {offset, epoch, duplicate (0/1)}.
PUBLISH = """
local meta, stream = KEYS[1], KEYS[2]
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1), 1}
  end
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  -- New epoch (first use, or the meta hash expired): old history belongs to no one.
  epoch = ARGV[5]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
redis.call('EXPIRE', meta, ARGV[4])
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'd', ARGV[1], 't', ARGV[6])
  redis.call('EXPIRE', stream, ARGV[3])
end
redis.call('PUBLISH', ARGV[8], offset .. ' ' .. epoch .. ' ' .. ARGV[6] .. ' ' .. ARGV[1])
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], offset .. ' ' .. epoch, 'EX', idem_ttl)
end
return {offset, epoch, 0}
"""

#: Read a channel's position and (part of) its history in one step.
#:
#: KEYS: meta, stream
#: ARGV: candidate epoch, meta TTL, mode, start id, count ('' = no limit)
#: mode: 'pos' (no entries), 'since' (XRANGE from start id), 'last' (newest count, newest
#: first), 'all'.
#: Returns {epoch, offset, entries}; a channel without meta gets its epoch here, so that the
#: position a subscriber starts from stays valid for the first publish.
READ = """
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('EXPIRE', meta, ARGV[2])
  return {epoch, 0, {}}
end
local offset = redis.call('HGET', meta, 'o') or 0
local mode = ARGV[3]
local entries = {}
if mode == 'since' then
  if ARGV[5] == '' then
    entries = redis.call('XRANGE', stream, ARGV[4], '+')
  else
    entries = redis.call('XRANGE', stream, ARGV[4], '+', 'COUNT', ARGV[5])
  end
elseif mode == 'last' then
  entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', ARGV[5])
elseif mode == 'all' then
  entries = redis.call('XRANGE', stream, '-', '+')
end
return {epoch, offset, entries}
"""
