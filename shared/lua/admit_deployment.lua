-- Admit a job, already admitted under its account's limits (admit.lua), under its provider
-- deployment's: what the upstream key allows, a sliding window of the last ARGV[2] ms, in the
-- deployment's slot. A refusal here gives the account's admission back (unadmit.lua).
-- KEYS: the deployment scope (req, tok, total, conc)
-- ARGV: 1 now ms, 2 window ms, 3 job id, 4 estimated tokens, 5 lease ms, 6 rpm (-1: none),
--       7 tpm (-1: none)
-- Returns {"admitted", "1" if admitted now, "0" if this was an admission made again}
--       | {"waiting", retry at ms, reason}
--#include _window
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local job = ARGV[3]
local est = tonumber(ARGV[4])
local rpm, tpm = limit(ARGV[6]), limit(ARGV[7])
local req, tok, total = KEYS[1], KEYS[2], KEYS[3]

slide(req, tok, total, now, window)
if redis.call("ZSCORE", req, job) ~= false then return {"admitted", "0"} end

local retry_at, reason = nil, nil
window_wait(req, tok, total, rpm, tpm, est, now, window, "provider deployment", function(t, why)
  if retry_at == nil or t > retry_at then retry_at = t; reason = why end
end)
if retry_at then return {"waiting", tostring(retry_at), reason} end

redis.call("ZADD", req, now, job)
redis.call("HSET", tok, job, est)
redis.call("INCRBY", total, est)
for i = 1, 4 do redis.call("PEXPIRE", KEYS[i], window + tonumber(ARGV[5]) + 60000) end
return {"admitted", "1"}
