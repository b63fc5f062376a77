"""The DLQ's atomic steps, as Lua scripts run by :class:`tasks.dlq.DeadLetterQueue`.

Each script is one step that must not be seen half done: an entry written with
its scope's dead mark, an unscoped entry written once per fingerprint, the
begin and abort of a replay, the removal of an entry. KEYS and ARGV are named
above each one; the ledger's own scripts are in :mod:`tasks.ledger_scripts`.
"""

from __future__ import annotations

__all__ = [
    "DEAD_LETTER_SCOPED",
    "DEAD_LETTER_UNSCOPED",
    "REMOVE",
    "REPLAY_ABORT",
    "REPLAY_BEGIN",
]

# KEYS: entries, index, lease, done, dead, meta, pending, pending index.
# ARGV: id, entry, score_ms, owner, ttl_s.  In the DLQ and no longer pending, in one step.
DEAD_LETTER_SCOPED = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('DEL', KEYS[7])
redis.call('ZREM', KEYS[8], KEYS[7])
local holder = redis.call('GET', KEYS[3])
if (not holder) or holder == ARGV[4] then
  redis.call('DEL', KEYS[3])
  if redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[5])
  end
  redis.call('HSET', KEYS[6], 'sending', '0')
end
return 1
"""

# KEYS: entries, index, unscoped [, pending, pending index].  ARGV: id, entry, score_ms,
# fingerprint.  Once per fingerprint: the same message dead-lettered again is the same entry.
DEAD_LETTER_UNSCOPED = """
local known = redis.call('HGET', KEYS[3], ARGV[4])
if known and redis.call('HEXISTS', KEYS[1], known) == 1 then return known end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
if #KEYS >= 5 then
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[5], KEYS[4])
end
return ARGV[1]
"""

# KEYS: entries, lease, done, dead, meta, pending, replaying.  ARGV: id.
# Step 1 of a replay: {'publish', deliveries, mark_pttl} (deliveries '' when no mark was
# cleared, '-' when the scope had no count), or why the trigger needs no publish. What
# was cleared is kept in `replaying` until the entry goes, so a begin repeated (a lost
# reply, a run killed before its publish) still knows what to put back.
REPLAY_BEGIN = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {'missing'} end
local mark = redis.call('GET', KEYS[4])
if mark == ARGV[1] then
  local pttl = tostring(redis.call('PTTL', KEYS[4]))
  redis.call('DEL', KEYS[4])
  local deliveries = redis.call('HGET', KEYS[5], 'deliveries') or '-'
  if deliveries ~= '-' then redis.call('HSET', KEYS[5], 'deliveries', '0') end
  redis.call('HSET', KEYS[7], ARGV[1], deliveries .. ' ' .. pttl)
  return {'publish', deliveries, pttl}
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'done'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'in_flight'} end
if mark then return {'superseded', mark} end
if redis.call('EXISTS', KEYS[6]) == 1 then return {'queued'} end
local began = redis.call('HGET', KEYS[7], ARGV[1])
if began then
  local deliveries, pttl = string.match(began, '^(%S+) (%S+)$')
  return {'publish', deliveries, pttl}
end
return {'publish', '', ''}
"""

# KEYS: lease, done, dead, meta, replaying.  ARGV: id, mark_pttl_ms, deliveries.
# A publish failed: put the mark back, unless a worker already took a copy.
REPLAY_ABORT = """
redis.call('HDEL', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2], 'NX') and ARGV[3] ~= '-' then
  if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HSET', KEYS[4], 'deliveries', ARGV[3]) end
end
return 1
"""

# KEYS: entries, index, unscoped, replaying [, dead].  ARGV: id, fingerprint.
# Remove an entry (its fingerprint, its replay record; with a dead key, its mark):
# 1 if it was there.
REMOVE = """
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[2]) end
if #KEYS >= 5 and redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
return 1
"""
