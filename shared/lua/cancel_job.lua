-- Request cancellation. A job nobody runs is cancelled here and now; a running one is flagged
-- and its worker stops it.
-- KEYS: job hash, cancel flag, lease, running zset, events stream, live channel
-- ARGV: now, retention s, job id, end event data
-- Returns {"terminal", status} | {"cancelled"} | {"requested"} | {"missing"}
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
redis.call("XADD", KEYS[5], "0-" .. seq, "t", "end", "d", ARGV[4])
redis.call("PUBLISH", KEYS[6], seq .. "\nend\n" .. ARGV[4])
redis.call("ZREM", KEYS[4], ARGV[3])
redis.call("EXPIRE", KEYS[1], ARGV[2])
redis.call("EXPIRE", KEYS[5], ARGV[2])
return {"cancelled"}
