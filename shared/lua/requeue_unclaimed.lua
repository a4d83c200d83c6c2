-- Queue again a job whose message a worker took off its queue but never started: the worker died
-- holding it (kombu keeps such a message unacknowledged until the visibility timeout). Once it is
-- sure: the message is still held, unacknowledged, and the job still queued and unchanged since
-- before the cutoff. Its stale unacknowledged entry is dropped (a worker that was alive after all
-- finds the job taken when it starts it, and does nothing).
-- KEYS: job hash, queue list, queued jobs zset, kombu unacked hash, kombu unacked index
-- ARGV: job id, delivery tag, now, new Celery message, cutoff (unix s)
-- Returns 1 when requeued, 0 when not (the job moved on, or this call made again found the entry
-- already dropped).
--#include _enqueue
if redis.call("HEXISTS", KEYS[4], ARGV[2]) == 0 then return 0 end
local job = redis.call("HMGET", KEYS[1], "status", "updated_at")
if job[1] ~= "queued" or tonumber(job[2] or "0") > tonumber(ARGV[5]) then return 0 end
redis.call("HSET", KEYS[1], "updated_at", ARGV[3])
enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[4], ARGV[3])
redis.call("HDEL", KEYS[4], ARGV[2])
redis.call("ZREM", KEYS[5], ARGV[2])
return 1
