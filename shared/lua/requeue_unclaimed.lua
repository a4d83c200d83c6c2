-- Stage a new message for a job whose message a worker took off its queue but never started: the
-- worker died holding it (kombu keeps such a message unacknowledged until the visibility
-- timeout). The caller found the message still held, unacknowledged, in the broker; this
-- requeues the job if it is still queued and unchanged since before the cutoff. The caller then
-- pushes the new message and drops the stale unacknowledged entry (a worker that was alive after
-- all finds the job taken when it starts it, and does nothing).
-- KEYS: job hash, queued jobs zset
-- ARGV: job id, now, new Celery message, cutoff (unix s)
-- Returns 1 when requeued (also for this call made again after its reply was lost: the job
-- requeued at this call's own time), 0 when not (the job moved on).
--#include _stage
local job = redis.call("HMGET", KEYS[1], "status", "updated_at")
if job[1] == "queued" and job[2] == ARGV[2] then return 1 end
if job[1] ~= "queued" or tonumber(job[2] or "0") > tonumber(ARGV[4]) then return 0 end
redis.call("HSET", KEYS[1], "updated_at", ARGV[2])
stage(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[2])
return 1
