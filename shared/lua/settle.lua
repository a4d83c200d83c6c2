-- After a call: replace a job's token estimate by what it really used, and release its
-- concurrency leases, in the scopes given (the account's three, with its waiting line, in the
-- account's slot; the deployment's in its own); settle its budget hold (the account's slot);
-- name the account's next waiting job (woken at once).
-- KEYS: [account waiting zset,] then per scope its (req, tok, total, conc) keys, [then the
--       budget's six keys (_budget.lua)]
-- ARGV: 1 job id, 2 actual tokens, 3 "1" if KEYS[1] is the waiting zset, 4 "1" if the last six
--       KEYS are the budget's, 5 real cost nano-USD, 6 account id
-- Returns {first waiting job of the account or "", thresholds newly crossed (_budget.lua)...}.
--#include _budget
local job = ARGV[1]
local actual = tonumber(ARGV[2])
local first = ARGV[3] == "1" and 2 or 1
local last = #KEYS
local alerts = {}
if ARGV[4] == "1" then
  last = #KEYS - 6
  alerts = settle_budget({unpack(KEYS, last + 1, #KEYS)}, job, ARGV[6], tonumber(ARGV[5]))
end
for k = first, last, 4 do
  local tok, total, conc = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local reserved = redis.call("HGET", tok, job)
  if reserved then
    redis.call("HSET", tok, job, actual)
    redis.call("INCRBY", total, actual - tonumber(reserved))
  end
  redis.call("ZREM", conc, job)
end
local next_job = ""
if first == 2 then next_job = redis.call("ZRANGE", KEYS[1], 0, 0)[1] or "" end
return {next_job, unpack(alerts)}
