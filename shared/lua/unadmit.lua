-- Give back an account's admission of a job that its provider deployment refused
-- (admit_deployment.lua): its share of the account's scopes and its budget hold are released,
-- and it is first in its account's line again (by its line score), the account woken when the
-- deployment can take it.
-- KEYS: 1 account waiting zset, 2 throttled accounts zset, 3..14 the account's three scopes
--       (req, tok, total, conc each), 15 budget holds hash, 16 budget due zset,
--       17 account budget hash, 18 key budget hash
-- ARGV: 1 job id, 2 account id, 3 job line score, 4 retry at ms
for s = 0, 2 do
  local req, tok, total, conc = KEYS[3 + 4 * s], KEYS[4 + 4 * s], KEYS[5 + 4 * s], KEYS[6 + 4 * s]
  local reserved = redis.call("HGET", tok, ARGV[1])
  if reserved then
    redis.call("HDEL", tok, ARGV[1])
    redis.call("DECRBY", total, reserved)
  end
  redis.call("ZREM", req, ARGV[1])
  redis.call("ZREM", conc, ARGV[1])
end
local hold = redis.call("HGET", KEYS[15], ARGV[1])
if hold then
  local cost, apid, _, kpid = string.match(hold, "^([^|]*)|([^|]*)|([^|]*)|([^|]*)")
  if apid ~= "" then redis.call("HINCRBY", KEYS[17], "reserved:" .. apid, -tonumber(cost)) end
  if kpid ~= "" then redis.call("HINCRBY", KEYS[18], "reserved:" .. kpid, -tonumber(cost)) end
  redis.call("HDEL", KEYS[15], ARGV[1])
  redis.call("ZREM", KEYS[16], ARGV[2] .. "|" .. ARGV[1])
end
redis.call("ZADD", KEYS[1], "NX", ARGV[3], ARGV[1])
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[2])
return 1
