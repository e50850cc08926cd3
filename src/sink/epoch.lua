-- The epoch record (docs/redis-loss.md): detects that Redis lost
-- writes it had acknowledged, and advances the epoch readers fold into every
-- data key.
-- KEYS[1]  the epoch record, e.g. ver:epoch (a hash, no TTL)
-- ARGV[1]  'check' or 'advance'
-- ARGV[2]  this process's watermark field, e.g. w:3f9a0c1d2e4b5a69
-- ARGV[3]  check: the value this process last saw in its field ('' if none)
--          advance: the epoch this process saw before the loss ('' if none)
-- ARGV[4]  check: the highest shared watermark `w` it has seen ('' if none)
-- Fields: e  the epoch, what readers fold into data keys (missing means 0)
--         w  a shared counter every check advances (all processes)
--         w:<process>  a counter only that process advances
-- Returns {status, epoch, own watermark, shared watermark}. A check's
-- status is 'ok', 'missing' (no epoch: first use, FLUSHALL, restart without
-- persistence, eviction) or 'rolled_back' (a counter went backwards: restart
-- from an older snapshot, failover to a lagging replica, restore). An
-- advance's is 'advanced' or 'adopted'.
local record = KEYS[1]
local own_field = ARGV[2]

if ARGV[1] == 'advance' then
  -- Every replica detects the same loss and asks to advance; the epoch
  -- moves once. Epochs only grow, and a loss can only take the record back
  -- to an epoch the process had seen or an older one (or drop it): an
  -- epoch above the one this process saw was advanced after it looked, by
  -- another process answering this loss, and is adopted. A process that
  -- never saw an epoch found the record missing: an epoch there now was
  -- made since, by a recovery from that loss.
  local seen = ARGV[3]
  local current_text = redis.call('HGET', record, 'e')
  local current = tonumber(current_text or '0') or 0
  local status, epoch
  if current_text and (seen == '' or current > (tonumber(seen) or 0)) then
    status, epoch = 'adopted', current_text
  else
    -- e := max(e + 1, server time in microseconds), as versions are:
    -- unique even when the record itself was lost or rolled back.
    local now = redis.call('TIME')
    local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
    status = 'advanced'
    epoch = string.format('%d', math.floor(math.max(current + 1, now_us)))
    redis.call('HSET', record, 'e', epoch)
  end
  -- Either way this process starts its watermarks afresh.
  redis.call('HSET', record, own_field, '0')
  local shared = redis.call('HINCRBY', record, 'w', 1)
  return {status, epoch, 0, shared}
end

local epoch = redis.call('HGET', record, 'e')
if not epoch then
  return {'missing', '0', 0, 0}
end
-- Only this process advances its own field: below what it last saw means
-- Redis forgot acknowledged writes, whatever the other processes did since.
local own = tonumber(redis.call('HGET', record, own_field) or '-1')
if ARGV[3] ~= '' and own < tonumber(ARGV[3]) then
  return {'rolled_back', epoch, own, tonumber(redis.call('HGET', record, 'w') or '0')}
end
-- The shared counter only grows: not above the highest value seen means it
-- went back (catches lost writes of processes that died meanwhile).
local shared = redis.call('HINCRBY', record, 'w', 1)
if ARGV[4] ~= '' and shared <= tonumber(ARGV[4]) then
  return {'rolled_back', epoch, own, shared}
end
own = redis.call('HINCRBY', record, own_field, 1)
return {'ok', epoch, own, shared}
