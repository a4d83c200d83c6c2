-- Send an account's first waiting job back to its queue for another admission attempt.
-- KEYS: job hash, account waiting zset, throttled accounts zset, queued jobs zset
-- ARGV: job id, now (unix s), account id, watchdog (ms: when to look again if nothing else
--       does), Celery message, now ms
-- Returns 1 when requeued (the caller pushes the message).
--#include _stage
-- Only the first in line goes: the caller's view of the line can be stale (a job submitted
-- earlier may have taken the first place since, with its own wake-up time, which the watchdog
-- below must not push back). A line is never left without a wake-up.
local first = redis.call("ZRANGE", KEYS[2], 0, 0)[1]
if first ~= ARGV[1] then
  if first and redis.call("ZSCORE", KEYS[3], ARGV[3]) == false then
    redis.call("ZADD", KEYS[3], ARGV[6], ARGV[3])
  end
  return 0
end
local status = redis.call("HGET", KEYS[1], "status")
if status ~= "throttled" then
  if status == "running" or status == "queued" then
    -- Mid-admission or already on its way: it parks itself again or is admitted; look
    -- again very soon in case it parked before this call.
    redis.call("ZADD", KEYS[3], tonumber(ARGV[6]) + 100, ARGV[3])
    return 0
  end
  -- Finished or gone: out of the line, and the next one gets its turn.
  redis.call("ZREM", KEYS[2], ARGV[1])
  if redis.call("ZCARD", KEYS[2]) > 0 then redis.call("ZADD", KEYS[3], ARGV[6], ARGV[3]) end
  return 0
end
redis.call("HSET", KEYS[1], "status", "queued", "updated_at", ARGV[2])
redis.call("HDEL", KEYS[1], "next_try_at")
stage(KEYS[1], KEYS[4], ARGV[1], ARGV[5], ARGV[2])
redis.call("ZADD", KEYS[3], ARGV[4], ARGV[3])
return 1
