-- Turn the first staged lines of a batch into queued jobs, in one step with their removal from the
-- staging list: a line is never lost nor queued twice. This call made again after its reply was
-- lost finds its first job recorded at this call's own time and changes nothing, answering as
-- the first run did (its caller pushes the messages: twice at worst, and a job runs once).
-- KEYS: 1 pending list, 2 batch jobs set, 3 batch in-flight counter, 4 queued jobs zset,
--       5 local batch in-flight counter, then per job: its hash
-- ARGV: 1 number of jobs n, 2 now, 3 retention s, 4 how many of them are the local model's,
--       then per job: job id, Celery message, field count f, then f field/value pairs
-- Returns the number of jobs staged (the caller pushes their messages).
--#include _stage
local n = tonumber(ARGV[1])
if n == 0 then return 0 end
if redis.call("EXISTS", KEYS[6]) == 1 then
  return redis.call("HGET", KEYS[6], "created_at") == ARGV[2] and n or 0
end
redis.call("LTRIM", KEYS[1], n, -1)
local a = 5
for i = 0, n - 1 do
  local job_key = KEYS[6 + i]
  local job_id, message, f = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  redis.call("HSET", job_key, unpack(ARGV, a + 3, a + 2 + 2 * f))
  stage(job_key, KEYS[4], job_id, message, ARGV[2])
  redis.call("EXPIRE", job_key, ARGV[3])
  redis.call("SADD", KEYS[2], job_id)
  a = a + 3 + 2 * f
end
redis.call("EXPIRE", KEYS[2], ARGV[3])
redis.call("INCRBY", KEYS[3], n)
if tonumber(ARGV[4]) > 0 then redis.call("INCRBY", KEYS[5], ARGV[4]) end
return n
