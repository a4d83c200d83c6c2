-- Included by the scripts that settle a job's budget hold (settle.lua, settle_budget.lua), in
-- the account's slot: the worst case the job held (admit.lua) is given back and its real cost
-- spent, in the periods it was held in, exactly once (the hold is the proof it is still owed).
-- b: {holds hash, due zset, account hash, key limits hash, account budget hash, key budget hash}
-- A hold is "cost|account period|key id|key period|attempt" (admit.lua).
-- Returns the thresholds newly crossed, each "scope|period id|percent|budget|spent" (nano-USD).
local function settle_budget(b, job, account, actual)
  local hold = redis.call("HGET", b[1], job)
  if not hold then return {} end
  local cost, apid, _, kpid = string.match(hold, "^([^|]*)|([^|]*)|([^|]*)|([^|]*)")
  cost = tonumber(cost) or 0
  redis.call("HDEL", b[1], job)
  redis.call("ZREM", b[2], account .. "|" .. job)
  local alerts = {}
  local function one(budget_key, pid, limits_key, scope)
    if pid == nil or pid == "" then return end
    if redis.call("HINCRBY", budget_key, "reserved:" .. pid, -cost) <= 0 then
      redis.call("HDEL", budget_key, "reserved:" .. pid)
    end
    local spent = redis.call("HINCRBY", budget_key, "spent:" .. pid, actual)
    local budget = tonumber(redis.call("HGET", limits_key, "budget_nanousd") or "")
    if budget and budget > 0 then
      local level = 0
      if spent >= budget then level = 100 elseif spent * 5 >= budget * 4 then level = 80 end
      if level > tonumber(redis.call("HGET", budget_key, "alerted:" .. pid) or "0") then
        redis.call("HSET", budget_key, "alerted:" .. pid, level)
        alerts[#alerts + 1] = scope .. "|" .. pid .. "|" .. level .. "|" .. string.format("%.0f", budget) .. "|"
          .. string.format("%.0f", spent)
      end
    end
  end
  one(b[5], apid, b[3], "account")
  one(b[6], kpid, b[4], "key")
  return alerts
end
