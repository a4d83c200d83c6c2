-- Release a lock only if this holder still holds it: a pass that outlived the lock's expiry
-- must not delete the lock another worker took since.
-- KEYS: the lock. ARGV: the holder's token. Returns 1 if released, 0 if it was not ours.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
