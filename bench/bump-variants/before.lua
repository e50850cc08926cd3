-- bench/bump-variants only: src/sink/bump.lua as it was before the HMGET
-- change (git show bfa82d3:src/sink/bump.lua), the "before" of BENCHMARKS.md.
-- Guarded version bumps, many per call (README, "The key protocol").
-- KEYS[i]        a version record, e.g. ver:product:42 or ver:ns:product
-- ARGV[1]        version_ttl in milliseconds
-- ARGV[2i]       KEYS[i]'s guard field, the change's source, e.g. p:pg:shop
-- ARGV[2i + 1]   KEYS[i]'s change position: decimal digits, fixed width per source
-- Returns one {applied, version} pair per key, in KEYS order: {1, v} when
-- applied, {0, v} when the record had already seen this position or a
-- later one (redelivery, replay, reordering). One call carries many keys
-- because a script call costs far more than the few commands inside it; on
-- a cluster every key of one call is in one hash slot (the caller groups).
local ttl = ARGV[1]

-- One clock reading for the call: versions stay unique per record because
-- each is max(v + 1, now).
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])

local replies = {}
for i, record in ipairs(KEYS) do
  local guard_field = ARGV[2 * i]
  local position = ARGV[2 * i + 1]
  -- HGET, not HMGET: the commands an ACL must allow stay the ones README
  -- lists.
  local seen = redis.call('HGET', record, guard_field)
  local current_text = redis.call('HGET', record, 'v')
  -- Same width means same encoding; digits compare as numbers then.
  if seen and #seen == #position and seen >= position then
    replies[i] = {0, current_text or '0'}
  else
    -- v := max(v + 1, server time in microseconds): unique even when the
    -- record expired and is created again. Lua numbers are doubles; both
    -- stay < 2^53.
    local current = tonumber(current_text or '0') or 0
    -- %d, never tostring: tostring may print 1.7e+15.
    local text = string.format('%d', math.floor(math.max(current + 1, now_us)))
    if current_text then
      -- pv: the version readers may serve while the new one is refilled
      -- (stale-while-revalidate); absent on a record this bump created.
      redis.call('HSET', record, 'v', text, 'pv', current_text, guard_field, position)
    else
      redis.call('HSET', record, 'v', text, guard_field, position)
    end
    redis.call('PEXPIRE', record, ttl)
    replies[i] = {1, text}
  end
end
return replies
