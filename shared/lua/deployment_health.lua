-- One provider call's outcome on a deployment that serves a model with others: counted in the
-- current window; a deployment failing at least the ratio of at least the minimum of calls in it
-- cools down (the workers call it only when no other deployment of the model is left).
-- KEYS: 1 the window's health hash, 2 the cooldown flag
-- ARGV: 1 ok (1) or failed (0), 2 window s, 3 minimum calls, 4 failure ratio, 5 cooldown s
-- Returns 1 if the deployment cools down now, else 0.
local calls = redis.call("HINCRBY", KEYS[1], "calls", 1)
local failures = tonumber(redis.call("HGET", KEYS[1], "failures") or "0")
if ARGV[1] == "0" then failures = redis.call("HINCRBY", KEYS[1], "failures", 1) end
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[2]) * 2)
if ARGV[1] == "0" and calls >= tonumber(ARGV[3]) and failures / calls >= tonumber(ARGV[4])
    and redis.call("EXISTS", KEYS[2]) == 0 then
  redis.call("SET", KEYS[2], calls .. " calls, " .. failures .. " failed", "EX", ARGV[5])
  return 1
end
return 0
