-- Hand a job that fair share held back to its queue: its message staged (the caller pushes it).
-- KEYS: job hash, queued jobs zset
-- ARGV: job id, now (unix s)
-- Returns the message to push, or "" (not held back any more, or not recorded yet).
--#include _stage
local held, message = unpack(redis.call("HMGET", KEYS[1], "held", "message"))
if held ~= "1" or redis.call("HGET", KEYS[1], "status") ~= "queued" then return "" end
redis.call("HDEL", KEYS[1], "held")
stage(KEYS[1], KEYS[2], ARGV[1], message, ARGV[2])
return message
