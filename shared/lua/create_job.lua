-- Record a new job with its queue message staged (the caller pushes it to the broker), or, held
-- back by fair share (field held "1"), with its message kept for when it is handed out
-- (release_job.lua). A replay (the reply to a first run was lost, and the call made again)
-- changes nothing.
-- KEYS: job hash, queued jobs zset, account's jobs zset (the job's shard's)
-- ARGV: job id, now, retention seconds, Celery message, then the record's fields and values
-- Returns the message to push: the new one, or on a replay the one still staged ("" if the
-- job has moved on, or is held back).
--#include _stage
if redis.call("EXISTS", KEYS[1]) == 1 then
  local job = redis.call("HMGET", KEYS[1], "status", "message", "held")
  return (job[1] == "queued" and job[3] ~= "1" and job[2]) or ""
end
redis.call("HSET", KEYS[1], unpack(ARGV, 5))
local held = redis.call("HGET", KEYS[1], "held") == "1"
if held then
  redis.call("HSET", KEYS[1], "message", ARGV[4])
else
  stage(KEYS[1], KEYS[2], ARGV[1], ARGV[4], ARGV[2])
end
redis.call("EXPIRE", KEYS[1], ARGV[3])
redis.call("ZADD", KEYS[3], ARGV[2], ARGV[1])
redis.call("EXPIRE", KEYS[3], ARGV[3])
if held then return "" end
return ARGV[4]
