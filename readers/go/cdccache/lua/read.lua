-- The read path in one round trip (readers/spec.md section 5).
-- KEYS[1]    the epoch record (ver:epoch)
-- KEYS[2..]  the version records: the deps, then the namespaces
-- ARGV[1]    the cache key K; ARGV[2] how many of KEYS[2..] are deps
-- Returns {time seconds, time microseconds, e, v1, pv1, v2, pv2, ...,
--          data key, PTTL of the data key, value of the data key}
-- with false (nil) for a missing pv or value. Read-only: run as EVALSHA_RO.
local now = redis.call('TIME')
local e = redis.call('HGET', KEYS[1], 'e') or '0'
local out = {now[1], now[2], e}
local key = ARGV[1] .. '@e' .. e
local deps = tonumber(ARGV[2])
for i = 2, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'v', 'pv')
  local v = fields[1] or '0'
  out[#out + 1] = v
  out[#out + 1] = fields[2]
  if i - 1 <= deps then
    key = key .. ':v' .. v
  else
    key = key .. ':n' .. v
  end
end
-- The data key is built here from the texts just read, so the value comes
-- back in the same round trip; the caller validates the texts and rebuilds
-- the key. (A key not in KEYS: fine on a standalone server, which is the
-- only place this script runs.)
out[#out + 1] = key
out[#out + 1] = redis.call('PTTL', key)
out[#out + 1] = redis.call('GET', key)
return out
