-- After a call: replace a job's token estimate by what it really used, and release its
-- concurrency leases, in the scopes given (the account's two, with its waiting line, in the
-- account's slot; the deployment's in its own); name the account's next waiting job (woken at
-- once).
-- KEYS: [account waiting zset,] then per scope its (req, tok, total, conc) keys
-- ARGV: 1 job id, 2 actual tokens, 3 "1" if KEYS[1] is the waiting zset
-- Returns the first waiting job of the account, or "".
local job = ARGV[1]
local actual = tonumber(ARGV[2])
local first = ARGV[3] == "1" and 2 or 1
for k = first, #KEYS, 4 do
  local tok, total, conc = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local reserved = redis.call("HGET", tok, job)
  if reserved then
    redis.call("HSET", tok, job, actual)
    redis.call("INCRBY", total, actual - tonumber(reserved))
  end
  redis.call("ZREM", conc, job)
end
if first == 1 then return "" end
return redis.call("ZRANGE", KEYS[1], 0, 0)[1] or ""
