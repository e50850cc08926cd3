-- One guarded version bump (architecture section 3, the key protocol).
-- KEYS[1]  the version record, e.g. ver:product:42 or ver:ns:product
-- ARGV[1]  the guard field of the source, e.g. p:pg:shop
-- ARGV[2]  the change's position: decimal digits, fixed width per source
-- ARGV[3]  version_ttl in milliseconds
-- Returns {1, version} when applied, {0, version} when the record had
-- already seen this position or a later one (redelivery, replay, reordering).
local record = KEYS[1]
local guard_field = ARGV[1]
local position = ARGV[2]

local seen = redis.call('HGET', record, guard_field)
-- Same width means same encoding; digits compare as numbers then.
if seen and #seen == #position and seen >= position then
  return {0, redis.call('HGET', record, 'v') or '0'}
end

-- v := max(v + 1, server time in microseconds): unique even when the record
-- expired and is created again. Lua numbers are doubles; both stay < 2^53.
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local current = tonumber(redis.call('HGET', record, 'v') or '0') or 0
local version = math.floor(math.max(current + 1, now_us))
-- %d, never tostring: tostring may print 1.7e+15.
local text = string.format('%d', version)
redis.call('HSET', record, 'v', text, guard_field, position)
redis.call('PEXPIRE', record, ARGV[3])
return {1, text}
