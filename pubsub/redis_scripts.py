"""The Lua scripts of the Redis brokers (loaded once with ``register_script``, run by EVALSHA).

Both scripts touch only keys of one channel (one hash slot). A script runs atomically: no other
command sees a half-done publish, and a history read sees the position and the entries of the
same instant.

Each script comes in two variants built from the same text:

* :data:`PUBLISH` / :data:`READ` for one Redis: ``PUBLISH`` to the live channel;
* :data:`CLUSTER_PUBLISH` / :data:`CLUSTER_READ` for Redis Cluster: ``SPUBLISH`` to the shard
  channel (same slot as the keys), and an epoch that also changes when the channel's slot is
  served by a replica promoted after its master failed. Replication is asynchronous, so the
  promoted replica may lack the newest publications the old master acknowledged; continuing
  the old epoch would hand out their offsets a second time with other data. The meta hash
  records which node wrote last (``n``, its ``CLUSTER MYID``) and that node's replication id
  (``r``); a script running on another node asks ``INFO replication`` once: when its previous
  replication id (``master_replid2``) is the last writer's, it is that writer's promoted
  replica and starts a new epoch, otherwise the keys came by ``MIGRATE`` (a reshard, nothing
  lost) and the epoch stays.
"""

from __future__ import annotations

# Sets the local ``epoch`` (nil when the channel needs a new one). KEYS[1] is the meta hash.
_EPOCH_SINGLE = """
local epoch = redis.call('HGET', KEYS[1], 'e')
"""

_EPOCH_CLUSTER = """
local epoch, writer, writer_replid = unpack(redis.call('HMGET', KEYS[1], 'e', 'n', 'r'))
local me = redis.call('CLUSTER', 'MYID')
if writer ~= me then
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%x+)')
  local promoted = writer_replid and writer_replid == string.match(info, 'master_replid2:(%x+)')
  if promoted or (epoch and not writer_replid) then
    epoch = false  -- this node took over from a failed master: offsets may have been lost
  end
  redis.call('HSET', KEYS[1], 'n', me, 'r', replid)
end
"""

_PUBLISH = """
local meta, stream = KEYS[1], KEYS[2]
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1), 1}
  end
end
--EPOCH--
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
redis.call('--PUBLISH--', ARGV[8], offset .. ' ' .. epoch .. ' ' .. ARGV[6] .. ' ' .. ARGV[1])
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], offset .. ' ' .. epoch, 'EX', idem_ttl)
end
return {offset, epoch, 0}
"""

_READ = """
local meta, stream = KEYS[1], KEYS[2]
--EPOCH--
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

#: Publish one message.
#:
#: KEYS: meta, stream[, idempotency record]
#: ARGV: data, history size, history TTL, meta TTL, candidate epoch, publish time,
#:       idempotency TTL (0 = no key), pub/sub channel
#: Returns {offset, epoch, duplicate (0/1)}.
PUBLISH = _PUBLISH.replace("--EPOCH--", _EPOCH_SINGLE).replace("--PUBLISH--", "PUBLISH")

#: :data:`PUBLISH` for Redis Cluster: SPUBLISH, and a new epoch after a failover.
CLUSTER_PUBLISH = _PUBLISH.replace("--EPOCH--", _EPOCH_CLUSTER).replace("--PUBLISH--", "SPUBLISH")

#: Read a channel's position and (part of) its history in one step.
#:
#: KEYS: meta, stream
#: ARGV: candidate epoch, meta TTL, mode, start id, count ('' = no limit)
#: mode: 'pos' (no entries), 'since' (XRANGE from start id), 'last' (newest count, newest
#: first), 'all'.
#: Returns {epoch, offset, entries}; a channel without meta gets its epoch here, so that the
#: position a subscriber starts from stays valid for the first publish.
READ = _READ.replace("--EPOCH--", _EPOCH_SINGLE)

#: :data:`READ` for Redis Cluster: a new epoch after a failover, as in :data:`CLUSTER_PUBLISH`.
CLUSTER_READ = _READ.replace("--EPOCH--", _EPOCH_CLUSTER)

_PUBLISH_MANY = """
local meta, stream = KEYS[1], KEYS[2]
local size, idem_ttl = tonumber(ARGV[1]), tonumber(ARGV[6])
local function stored_epoch()
--EPOCH--
  return epoch
end
local epoch = nil
local results = {}
local next_key = 3
for i = 8, #ARGV, 2 do
  local data, idem = ARGV[i], nil
  if ARGV[i + 1] == '1' then
    idem = KEYS[next_key]
    next_key = next_key + 1
  end
  local seen = idem and redis.call('GET', idem)
  if seen then
    local sep = string.find(seen, ' ', 1, true)
    results[#results + 1] = string.sub(seen, 1, sep - 1)
    results[#results + 1] = string.sub(seen, sep + 1)
    results[#results + 1] = 1
  else
    if not epoch then
      epoch = stored_epoch()
      if not epoch then
        -- New epoch (first use, or the meta hash expired): old history belongs to no one.
        epoch = ARGV[4]
        redis.call('DEL', stream)
        redis.call('HSET', meta, 'e', epoch, 'o', 0)
      end
    end
    local offset = redis.call('HINCRBY', meta, 'o', 1)
    if size > 0 then
      redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'd', data, 't', ARGV[5])
    end
    redis.call('--PUBLISH--', ARGV[7], offset .. ' ' .. epoch .. ' ' .. ARGV[5] .. ' ' .. data)
    if idem then
      redis.call('SET', idem, offset .. ' ' .. epoch, 'EX', idem_ttl)
    end
    results[#results + 1] = offset
    results[#results + 1] = epoch
    results[#results + 1] = 0
  end
end
if epoch then
  redis.call('EXPIRE', meta, ARGV[3])
  if size > 0 then
    redis.call('EXPIRE', stream, ARGV[2])
  end
end
return results
"""

#: Publish several messages of one channel, in order, as :data:`PUBLISH` would one by one
#: (one round trip; the script runs atomically).
#:
#: KEYS: meta, stream, then the idempotency records of the messages that have one, in order
#: ARGV: history size, history TTL, meta TTL, candidate epoch, publish time, idempotency TTL,
#:       pub/sub channel, then for each message: data, '1' if it has an idempotency record
#:       else '0'
#: Returns {offset, epoch, duplicate (0/1)} of each message, flattened.
PUBLISH_MANY = _PUBLISH_MANY.replace("--EPOCH--", _EPOCH_SINGLE).replace("--PUBLISH--", "PUBLISH")

#: :data:`PUBLISH_MANY` for Redis Cluster.
CLUSTER_PUBLISH_MANY = _PUBLISH_MANY.replace("--EPOCH--", _EPOCH_CLUSTER).replace(
    "--PUBLISH--", "SPUBLISH"
)
