"""The ledger's atomic steps, as Lua scripts run by :class:`tasks.idempotency.IdempotencyStore`.

Each script is one step of a scope's life that must not be seen half done:
claim (with the first request's rate-limit slot), renew before each attempt,
not-sent after a certain failure, commit (with the Celery result), extend
during a long wait, release. KEYS and ARGV are named above each one; every
script compares the owner before it writes and is safe to repeat when a
dropped connection loses its reply. The DLQ's own steps are in
:mod:`tasks.dlq_scripts`.
"""

from __future__ import annotations

from tasks.history import HISTORY_APPEND_LUA
from tasks.ratelimit import GCRA_RESERVE_LUA

__all__ = ["CLAIM", "COMMIT", "EXTEND", "NOT_SENT", "RELEASE", "RENEW"]

# KEYS: lease, done, dead, meta, pending, pending index, scheduled record,
#       cancelled marker (one slot: the trigger's bucket, config.keys)
#       [, rate-limit TAT: untagged layouts only, where one slot is not needed]
# ARGV: owner, lease_ms, ttl_s, now_s, task_id, limit
#       [, interval_us, tolerance_us, max_wait_us, now_us]
# A successful claim also registers the first attempt (sending=1, attempts+1)
# and, given the limiter's key, reserves its request slot: the delivery's
# first request costs no round trip besides this one. Not over the redelivery
# limit only. The same owner claiming again (its reply was lost to a dropped
# connection and the client repeated it) gets the same answer without counting
# anything twice.
CLAIM = (
    GCRA_RESERVE_LUA
    + """
local done = redis.call('GET', KEYS[2])
local dead = redis.call('GET', KEYS[3])
if done or dead then
  -- a copy of a finished trigger: its pending record (if any) is stale
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[6], KEYS[5])
end
if done then return {'done', done} end
if dead then return {'dead', dead} end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  local m = redis.call('HMGET', KEYS[4], 'deliveries', 'took_over_by', 'attempts', 'first_seen')
  local took_over = '0'
  if m[2] == ARGV[1] then took_over = '1' end
  return {'claimed', m[1] or '1', took_over, m[3] or '0', m[4] or ARGV[4], '-1'}
end
if holder then
  local holder_task = string.match(holder, '^(.*)|[^|]*$') or holder
  if holder_task == ARGV[5] then
    return {'own_live', tostring(redis.call('PTTL', KEYS[1]))}
  end
  return {'other', holder_task}
end
-- cancelled, or scheduled and not yet due (tasks.cancel, tasks.schedule)
if redis.call('EXISTS', KEYS[8]) == 1 then
  redis.call('DEL', KEYS[5])
  redis.call('ZREM', KEYS[6], KEYS[5])
  return {'cancelled', ''}
end
local sched = redis.call('HMGET', KEYS[7], 'task_id', 'send_at_ms', 'taken')
if sched[1] then
  local t = redis.call('TIME')
  if sched[1] ~= ARGV[5] or tonumber(sched[2]) > t[1] * 1000 + math.floor(t[2] / 1000) then
    if not sched[3] then  -- this copy's own pending record: the take writes the real one
      redis.call('DEL', KEYS[5])
      redis.call('ZREM', KEYS[6], KEYS[5])
    end
    return {'scheduled', sched[1]}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local deliveries = redis.call('HINCRBY', KEYS[4], 'deliveries', 1)
local was_sending = redis.call('HGET', KEYS[4], 'sending') or '0'
if was_sending == '1' then redis.call('HSET', KEYS[4], 'took_over_by', ARGV[1]) end
redis.call('HSETNX', KEYS[4], 'first_seen', ARGV[4])
local attempts
local slot = -1
if deliveries <= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[4], 'sending', '1', 'attempt_owner', ARGV[1] .. '#1')
  attempts = redis.call('HINCRBY', KEYS[4], 'attempts', 1)
  if KEYS[9] then
    local now_us = tonumber(ARGV[10])
    if now_us <= 0 then
      local t = redis.call('TIME')
      now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    local r = gcra_reserve(KEYS[9], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), now_us)
    if r[1] == 1 then slot = r[2] end
  end
else
  redis.call('HSET', KEYS[4], 'sending', '0')
  attempts = tonumber(redis.call('HGET', KEYS[4], 'attempts') or '0')
end
redis.call('EXPIRE', KEYS[4], ARGV[3])
return {'claimed', tostring(deliveries), was_sending, tostring(attempts),
        redis.call('HGET', KEYS[4], 'first_seen'), tostring(slot)}
"""
)

# Before HTTP attempt number ARGV[4]. ARGV: owner, lease_ms, ttl_s, number.
# Re-takes a lease nobody holds (it lapsed during a long wait); registers each
# attempt number once, however often a lost reply makes the client repeat it.
RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local mark = ARGV[1] .. '#' .. ARGV[4]
if redis.call('HGET', KEYS[4], 'attempt_owner') == mark then
  return tonumber(redis.call('HGET', KEYS[4], 'attempts') or '0')
end
redis.call('HSET', KEYS[4], 'sending', '1', 'attempt_owner', mark)
local attempts = redis.call('HINCRBY', KEYS[4], 'attempts', 1)
redis.call('EXPIRE', KEYS[4], ARGV[3])
return attempts
"""

# After an attempt Clix certainly did not accept. ARGV: owner
NOT_SENT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[4], 'sending', '0')
return 1
"""

# KEYS: lease, done, dead, meta, pending, pending index[, Celery result]
# ARGV: owner, trigger_id, ttl_s, result value, result ttl_s (unused without
#       the result key), attempt history entry ('' = none), history cap
# Done and no longer pending, in one step. What a done trigger is remembered
# by is its done record alone: the bare trigger_id, followed by ``|`` and its
# attempt history when there is one (tasks.history; the successful attempt
# is added here). The counters of its deliveries served the running delivery
# and go. With
# a Celery result key, the task's result is written (and published, as Celery's
# Redis backend does) in the same step: on a plain Redis store only, the one key
# of a script outside its slot (a cluster store keeps no Celery results).
# 1: committed (also when this very commit already landed); 0: another delivery
# holds the scope or committed first.
COMMIT = (
    HISTORY_APPEND_LUA
    + """
local done = redis.call('GET', KEYS[2])
if done then
  if done == ARGV[2] or string.sub(done, 1, #ARGV[2] + 1) == ARGV[2] .. '|' then return 1 end
  return 0
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
local history = history_join(redis.call('HGET', KEYS[4], 'h'), ARGV[6], ARGV[7])
local value = ARGV[2]
if history ~= '' then value = ARGV[2] .. '|' .. history end
redis.call('SET', KEYS[2], value, 'EX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], KEYS[5])
if KEYS[7] then
  if tonumber(ARGV[5]) > 0 then
    redis.call('SET', KEYS[7], ARGV[4], 'EX', ARGV[5])
  else
    redis.call('SET', KEYS[7], ARGV[4])
  end
  redis.call('PUBLISH', KEYS[7], ARGV[4])
end
return 1
"""
)

# ARGV: owner, lease_ms.  Extend the lease during a long wait (not an attempt);
# re-take it when it lapsed and nobody else holds the scope: 1, else 0.
EXTEND = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder or redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# ARGV: owner, uncount (1: this delivery does not count towards the redelivery
# limit), unsent (1: the attempt the claim registered was never sent)
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[4], 'sending', '0')
  if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[4], 'deliveries', -1) end
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[4], 'attempts', -1) end
  return 1
end
return 0
"""
