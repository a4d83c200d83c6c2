-- Record a new job with its queue message staged (the caller pushes it to the broker).
-- A replay (the reply to a first run was lost, and the call made again) changes nothing.
-- KEYS: job hash, queued jobs zset, account's jobs zset (the job's shard's)
-- ARGV: job id, now, retention seconds, Celery message, then the record's fields and values
-- Returns the message to push: the new one, or on a replay the one still staged ("" if the
-- job has moved on).
--#include _stage
if redis.call("EXISTS", KEYS[1]) == 1 then
  local job = redis.call("HMGET", KEYS[1], "status", "message")
  return (job[1] == "queued" and job[2]) or ""
end
redis.call("HSET", KEYS[1], unpack(ARGV, 5))
stage(KEYS[1], KEYS[2], ARGV[1], ARGV[4], ARGV[2])
redis.call("EXPIRE", KEYS[1], ARGV[3])
redis.call("ZADD", KEYS[3], ARGV[2], ARGV[1])
redis.call("EXPIRE", KEYS[3], ARGV[3])
return ARGV[4]
