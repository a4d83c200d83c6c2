-- Claim a job for one attempt, atomically, and return what the attempt needs to start: the
-- job's record and the events already published (a resumed job continues after them).
-- KEYS: job hash, lease, running zset, events stream, queued jobs zset
-- ARGV: attempt token, lease ms, now (unix s), max deliveries, job id
-- Returns {"claimed", attempts, record (HGETALL), events (XRANGE)} | {"missing"}
--       | {"terminal", status} | {"busy", lease pttl} | {"exhausted", attempts}
local status = redis.call("HGET", KEYS[1], "status")
if not status then return {"missing"} end
if status == "succeeded" or status == "failed" or status == "cancelled" then
  redis.call("ZREM", KEYS[5], ARGV[5])
  return {"terminal", status}
end
local holder = redis.call("GET", KEYS[2])
if holder == ARGV[1] then  -- this claim made again (its reply was lost): the same answer
  return {"claimed", redis.call("HGET", KEYS[1], "attempts"), redis.call("HGETALL", KEYS[1]),
          redis.call("XRANGE", KEYS[4], "-", "+")}
end
if holder then
  return {"busy", tostring(redis.call("PTTL", KEYS[2]))}
end
local attempts = redis.call("HINCRBY", KEYS[1], "attempts", 1)
if attempts > tonumber(ARGV[4]) then
  redis.call("HINCRBY", KEYS[1], "attempts", -1)
  return {"exhausted", tostring(attempts - 1)}
end
redis.call("ZREM", KEYS[5], ARGV[5])
redis.call("HDEL", KEYS[1], "message")
redis.call("SET", KEYS[2], ARGV[1], "PX", ARGV[2])
redis.call("ZADD", KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[2]) / 1000, ARGV[5])
redis.call("HSET", KEYS[1], "status", "running", "updated_at", ARGV[3], "worker", ARGV[1])
return {"claimed", tostring(attempts), redis.call("HGETALL", KEYS[1]), redis.call("XRANGE", KEYS[4], "-", "+")}
