-- Stage a new message for a job whose message was lost on its way to a worker, once it is sure.
-- kombu's Redis transport takes a message off the queue (BRPOP) and only then records it as
-- delivered (the unacked hash): a worker killed in between loses it, and so does a caller that
-- died between recording a job and pushing its message. The caller has looked in the broker and
-- found the job's message (``ARGV[5]``) neither on its queue nor held unacknowledged; this
-- requeues the job if it is still queued with that message since before the cutoff. (A message
-- being taken at this very moment would be delivered twice; the claim lets only one attempt
-- run.)
-- KEYS: job hash, queued jobs zset
-- ARGV: job id, now, new Celery message, cutoff (unix s), the message looked for
-- Returns "requeued" (the caller pushes the new message) | "waiting" (queued since after the
-- cutoff, or with another message: look again later) | "done" (not queued)
--#include _stage
local status, message = unpack(redis.call("HMGET", KEYS[1], "status", "message"))
if status ~= "queued" or not message then
  redis.call("ZREM", KEYS[2], ARGV[1])
  return "done"
end
-- This call made again after its reply was lost: the same answer.
if message == ARGV[3] and redis.call("HGET", KEYS[1], "updated_at") == ARGV[2] then return "requeued" end
local score = tonumber(redis.call("ZSCORE", KEYS[2], ARGV[1]) or "0")
if score > tonumber(ARGV[4]) or message ~= ARGV[5] then return "waiting" end
redis.call("HSET", KEYS[1], "updated_at", ARGV[2])
stage(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ARGV[2])
return "requeued"
