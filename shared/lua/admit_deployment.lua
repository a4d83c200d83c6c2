-- Admit a job, already admitted under its account's limits (admit.lua), under its provider
-- deployment's: what the upstream key allows, a sliding window of the last ARGV[2] ms, in the
-- deployment's slot. A refusal here gives the account's admission back (unadmit.lua).
-- KEYS: the deployment scope (req, tok, total, conc)
-- ARGV: 1 now ms, 2 window ms, 3 job id, 4 estimated tokens, 5 lease ms, 6 rpm (-1: none),
--       7 tpm (-1: none)
-- Returns {"admitted", "1" if admitted now, "0" if this was an admission made again}
--       | {"waiting", retry at ms, reason}
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local job = ARGV[3]
local est = tonumber(ARGV[4])
local function limit(v)
  local n = tonumber(v)
  if n == nil or n < 0 then return nil end
  return n
end
local rpm, tpm = limit(ARGV[6]), limit(ARGV[7])
local req, tok, total = KEYS[1], KEYS[2], KEYS[3]
local name = "provider deployment"

local old = redis.call("ZRANGEBYSCORE", req, "-inf", now - window)
if #old > 0 then
  local gone = 0
  for first = 1, #old, 1000 do  -- unpack() has a stack limit: in chunks
    local chunk = {unpack(old, first, math.min(first + 999, #old))}
    for _, a in ipairs(redis.call("HMGET", tok, unpack(chunk))) do gone = gone + (tonumber(a) or 0) end
    redis.call("HDEL", tok, unpack(chunk))
  end
  redis.call("DECRBY", total, gone)
  redis.call("ZREMRANGEBYSCORE", req, "-inf", now - window)
end
if redis.call("ZSCORE", req, job) ~= false then return {"admitted", "0"} end

local retry_at, reason = nil, nil
if rpm then
  local count = redis.call("ZCARD", req)
  if count >= rpm then
    local nth = redis.call("ZRANGE", req, count - rpm, count - rpm, "WITHSCORES")
    retry_at, reason = tonumber(nth[2]) + window + 1, name .. " requests-per-window limit (" .. rpm .. ")"
  end
end
if tpm then
  local used = tonumber(redis.call("GET", total) or "0")
  if used + est > tpm then
    local entries = redis.call("ZRANGE", req, 0, -1, "WITHSCORES")
    local freed = 0
    local at = now + window
    for i = 1, #entries, 2 do
      freed = freed + (tonumber(redis.call("HGET", tok, entries[i])) or 0)
      if used - freed + est <= tpm then at = tonumber(entries[i + 1]) + window + 1; break end
    end
    if retry_at == nil or at > retry_at then
      retry_at, reason = at, name .. " tokens-per-window limit (" .. tpm .. ")"
    end
  end
end
if retry_at then return {"waiting", tostring(retry_at), reason} end

redis.call("ZADD", req, now, job)
redis.call("HSET", tok, job, est)
redis.call("INCRBY", total, est)
for i = 1, 4 do redis.call("PEXPIRE", KEYS[i], window + tonumber(ARGV[5]) + 60000) end
return {"admitted", "1"}
