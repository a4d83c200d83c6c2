-- Forget an account's wake-up once none of its jobs waits. Atomic: a job may be parking at this
-- moment, and a line left without a wake-up would wait forever.
-- KEYS: account waiting zset, throttled accounts zset. ARGV: account id. Returns 1 if forgotten.
if redis.call("ZCARD", KEYS[1]) > 0 then return 0 end
return redis.call("ZREM", KEYS[2], ARGV[1])
