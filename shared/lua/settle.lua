-- After a call: replace a job's token estimate by what it really used, release its
-- concurrency leases, and name the account's next waiting job (woken at once).
-- KEYS: 1 account waiting zset, 2..13 the three scopes' (req, tok, total, conc) keys
-- ARGV: 1 job id, 2 actual tokens
-- Returns the first waiting job of the account, or "".
local job = ARGV[1]
local actual = tonumber(ARGV[2])
for s = 0, 2 do
  local tok, total, conc = KEYS[2 + 4 * s + 1], KEYS[2 + 4 * s + 2], KEYS[2 + 4 * s + 3]
  local reserved = redis.call("HGET", tok, job)
  if reserved then
    redis.call("HSET", tok, job, actual)
    redis.call("INCRBY", total, actual - tonumber(reserved))
  end
  redis.call("ZREM", conc, job)
end
return redis.call("ZRANGE", KEYS[1], 0, 0)[1] or ""
