-- A worker shutting down gives a running job back to its queue, at once, for another worker
-- to continue (after the text already delivered). Fenced by the lease; not a delivery failure.
-- KEYS: job hash, lease, running zset, queued jobs zset
-- ARGV: attempt token, now, job id, Celery message
-- Returns 1 when handed back (the caller pushes the message), else 0.
--#include _stage
--#include _replayed
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return replayed(KEYS[1], ARGV[1], "queued", ARGV[2]) and 1 or 0
end
redis.call("HSET", KEYS[1], "status", "queued", "updated_at", ARGV[2])
redis.call("HINCRBY", KEYS[1], "attempts", -1)
redis.call("DEL", KEYS[2])
redis.call("ZREM", KEYS[3], ARGV[3])
stage(KEYS[1], KEYS[4], ARGV[3], ARGV[4], ARGV[2])
return 1
