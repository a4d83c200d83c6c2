-- Request cancellation. A job nobody runs (queued or throttled) is cancelled here and now,
-- with its usage record (no tokens); a running one is flagged and its worker stops it. (The
-- caller then takes a cancelled job out of its account's waiting line: line.lua.)
-- KEYS: 1 job hash, 2 cancel flag, 3 lease, 4 running zset, 5 events stream, 6 live channel,
--       7 account usage hash of the day, 8 account usage days zset, 9 accounts with usage set,
--       10 batch hash, 11 batch results, 12 batch errors, 13 batch in-flight counter,
--       14 active batches, 15 local batch in-flight counter (the job's shard's)
-- ARGV: 1 now, 2 retention s, 3 job id, 4 end event data, 5 account id, 6 model, 7 day,
--       8 day score, 9 usage retention s
-- Returns {"terminal", status} | {"cancelled"} | {"requested"} | {"missing"}
--#include _batch_line
local status = redis.call("HGET", KEYS[1], "status")
if not status then return {"missing"} end
if status == "succeeded" or status == "failed" or status == "cancelled" then
  return {"terminal", status}
end
redis.call("SET", KEYS[2], ARGV[1], "EX", ARGV[2])
if redis.call("EXISTS", KEYS[3]) == 1 then return {"requested"} end
local last = redis.call("XREVRANGE", KEYS[5], "+", "-", "COUNT", 1)
local seq = 1
if #last > 0 then seq = tonumber(string.match(last[1][1], "-(%d+)$")) + 1 end
redis.call("HSET", KEYS[1], "status", "cancelled", "finished_at", ARGV[1], "updated_at", ARGV[1])
redis.call("HDEL", KEYS[1], "next_try_at")
redis.call("XADD", KEYS[5], "0-" .. seq, "t", "end", "d", ARGV[4])
redis.call("PUBLISH", KEYS[6], seq .. "\nend\n" .. ARGV[4])
redis.call("ZREM", KEYS[4], ARGV[3])
local m = ARGV[6] .. "|"
redis.call("HINCRBY", KEYS[7], m .. "requests", 1)
redis.call("HINCRBY", KEYS[7], m .. "cancelled", 1)
local key_id = redis.call("HGET", KEYS[1], "key_id")
if key_id then
  redis.call("HINCRBY", KEYS[7], "k:" .. key_id .. "|" .. m .. "requests", 1)
  redis.call("HINCRBY", KEYS[7], "k:" .. key_id .. "|" .. m .. "cancelled", 1)
end
redis.call("EXPIRE", KEYS[7], ARGV[9])
redis.call("ZADD", KEYS[8], ARGV[8], ARGV[7])
redis.call("EXPIRE", KEYS[8], ARGV[9])
redis.call("SADD", KEYS[9], ARGV[5])
batch_line_done(KEYS[1], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], "cancelled", ARGV[1], ARGV[3])
redis.call("EXPIRE", KEYS[1], ARGV[2])
redis.call("EXPIRE", KEYS[5], ARGV[2])
return {"cancelled"}
