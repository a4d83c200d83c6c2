-- Send an account's first waiting job back to its queue for another admission attempt, once
-- its account's line gave it its turn (``line.lua``, the account's slot).
-- KEYS: job hash, queued jobs zset
-- ARGV: job id, now (unix s), Celery message
-- Returns "requeued" (its message staged: the caller pushes it; also for this call made again
-- after its reply was lost: the job queued at this call's own time) | "busy" (mid-admission or
-- already on its way: it parks itself again or is admitted) | "gone" (finished or expired).
--#include _stage
local status, updated = unpack(redis.call("HMGET", KEYS[1], "status", "updated_at"))
if status == "queued" and updated == ARGV[2] then return "requeued" end
if status == "throttled" then
  redis.call("HSET", KEYS[1], "status", "queued", "updated_at", ARGV[2])
  redis.call("HDEL", KEYS[1], "next_try_at")
  stage(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[2])
  return "requeued"
end
if status == "running" or status == "queued" then return "busy" end
return "gone"
