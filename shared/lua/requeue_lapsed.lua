-- Hand a job whose worker died (lease lapsed) back to the queue, once.
-- KEYS: job hash, lease, running zset, queued jobs zset
-- ARGV: job id, now, Celery message
-- Returns 1 when requeued (the caller pushes the message; also for this call made again after
-- its reply was lost: the job queued at this call's own time), 0 when the job is owned again,
-- finished, or gone.
--#include _stage
if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
local status, updated = unpack(redis.call("HMGET", KEYS[1], "status", "updated_at"))
redis.call("ZREM", KEYS[3], ARGV[1])
if status == "queued" and updated == ARGV[2] then return 1 end
if status ~= "running" then return 0 end
redis.call("HSET", KEYS[1], "status", "queued", "updated_at", ARGV[2])
stage(KEYS[1], KEYS[4], ARGV[1], ARGV[3], ARGV[2])
return 1
