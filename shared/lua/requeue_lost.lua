-- Queue again a job whose message was lost on its way to a worker, once it is sure.
-- kombu's Redis transport takes a message off the queue (BRPOP) and only then records it as
-- delivered (the unacked hash): a worker killed in between loses it, and the job would stay
-- "queued" for ever. A job queued before the cutoff whose message is neither on its queue nor
-- held unacknowledged by a worker gets a new message. (A message being taken at this very
-- moment would be delivered twice; the claim lets only one attempt run.)
-- KEYS: job hash, queue list, queued jobs zset, kombu unacked hash
-- ARGV: job id, now, new Celery message, cutoff (unix s)
-- Returns "requeued" | "waiting" (still on the queue or held by a worker) | "done" (not queued)
--#include _enqueue
local status, message = unpack(redis.call("HMGET", KEYS[1], "status", "message"))
if status ~= "queued" or not message then
  redis.call("ZREM", KEYS[3], ARGV[1])
  return "done"
end
local score = tonumber(redis.call("ZSCORE", KEYS[3], ARGV[1]) or "0")
if score > tonumber(ARGV[4]) then return "waiting" end
local ok, decoded = pcall(cjson.decode, message)
local tag = ok and decoded.properties and decoded.properties.delivery_tag
if (tag and redis.call("HEXISTS", KEYS[4], tag) == 1) or redis.call("LPOS", KEYS[2], message) then
  redis.call("ZADD", KEYS[3], "XX", ARGV[2], ARGV[1])  -- look again one cutoff later
  return "waiting"
end
redis.call("HSET", KEYS[1], "updated_at", ARGV[2])
enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[2])
return "requeued"
