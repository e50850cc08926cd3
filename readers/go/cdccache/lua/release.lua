-- Releases a lease only when it is still ours (readers/spec.md section 5):
-- a holder whose lease expired must not delete its successor's.
-- KEYS[1] the lease key; ARGV[1] the holder's token. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
