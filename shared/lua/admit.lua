-- Admit a job under its account's limits, atomically, in one round trip (the account's slot;
-- the provider deployment's limits are admitted after it, in theirs: admit_deployment.lua, and
-- a refusal there gives this admission back: unadmit.lua).
--
-- Two scopes, each a sliding window of the last ARGV[2] ms plus concurrency leases:
--   1. the account (limits from its hash: rpm, tpm, max_concurrency),
--   2. the account for this model (model_limits JSON in the account hash, by model id).
-- Per scope: req (zset job -> admit ms), tok (hash job -> tokens), total (string: sum of tok),
-- conc (zset job -> lease expiry ms).
--
-- Jobs of an account are admitted in submission order: while the account has waiting jobs, a
-- job that is not the first of them waits behind it.
--
-- KEYS: 1 account hash, 2 account waiting zset, 3 throttled accounts zset,
--       4..7 account scope (req, tok, total, conc), 8..11 model scope
-- ARGV: 1 now ms, 2 window ms, 3 job id, 4 estimated tokens, 5 lease ms, 6 account id,
--       7 job submission score, 8 model id
-- A scope without any limit is skipped (no commands). Returns
-- {"admitted", next waiting job or "", "1" if the job holds anything to settle else "0",
--  "1" if admitted now, "0" if this was an admission made again}
--       | {"waiting", retry at ms, reason} | {"too_large", reason}
--#include _window
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local job = ARGV[3]
local est = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])

local acct = redis.call("HMGET", KEYS[1], "rpm", "tpm", "max_concurrency", "model_limits")
local model_rpm, model_tpm, model_conc
if acct[4] then
  local ok, all = pcall(cjson.decode, acct[4])
  if ok and type(all) == "table" and type(all[ARGV[8]]) == "table" then
    local m = all[ARGV[8]]
    model_rpm, model_tpm, model_conc = limit(m.rpm), limit(m.tpm), limit(m.max_concurrency)
  end
end
local scopes = {
  {k = 4, rpm = limit(acct[1]), tpm = limit(acct[2]), conc = limit(acct[3]), name = "account"},
  {k = 8, rpm = model_rpm, tpm = model_tpm, conc = model_conc, name = "account model"},
}

local active = {}
for _, s in ipairs(scopes) do
  if s.rpm or s.tpm or s.conc then active[#active + 1] = s end
end
scopes = active

-- A request that could never be admitted must not wait forever.
for _, s in ipairs(scopes) do
  if s.rpm == 0 or s.conc == 0 then
    return {"too_large", s.name .. " limit is 0: nothing can be admitted"}
  end
  if s.tpm and est > s.tpm then
    return {"too_large", s.name .. " tokens-per-window limit is " .. s.tpm .. ", the request needs up to " .. est}
  end
end

-- This admission made again (its reply was lost): the job holds it already, in every scope (in
-- the window of each rate-limited one, with a live lease in each capped one). The same answer,
-- whatever joined the account's line meanwhile.
if #scopes > 0 then
  local held = true
  for _, s in ipairs(scopes) do
    if (s.rpm or s.tpm) and redis.call("ZSCORE", KEYS[s.k], job) == false then held = false; break end
    local until_ms = s.conc and redis.call("ZSCORE", KEYS[s.k + 3], job)
    if s.conc and (not until_ms or tonumber(until_ms) <= now) then held = false; break end
  end
  if held then
    return {"admitted", redis.call("ZRANGE", KEYS[2], 0, 0)[1] or "", "1", "0"}
  end
end

-- Order: only the first waiting job of the account may be admitted. A job submitted before
-- the first in line (its delivery was slower than a later job's) takes that place, and with it
-- the duty to set the account's wake-up time: the one there may be a requeue's watchdog.
-- (Redis's own order decides, ties included: the job joins the line and looks at its rank.)
local head = redis.call("ZRANGE", KEYS[2], 0, 0)[1]
if head and head ~= job then
  redis.call("ZADD", KEYS[2], "NX", ARGV[7], job)
  local ahead = redis.call("ZRANK", KEYS[2], job)
  if ahead > 0 then
    -- Not before the account wakes, nor before its windows have room for the jobs ahead and
    -- this one (each taken to need what this one does): the earliest it may really go.
    local at = tonumber(redis.call("ZSCORE", KEYS[3], ARGV[6]) or (now + 1000))
    for _, s in ipairs(scopes) do
      slide(KEYS[s.k], KEYS[s.k + 1], KEYS[s.k + 2], now, window)
      at = math.max(at, room_at(KEYS[s.k], KEYS[s.k + 1], KEYS[s.k + 2], s.rpm, s.tpm, est, ahead + 1, now, window))
    end
    return {"waiting", tostring(at), "waiting behind " .. ahead .. " earlier job(s) of the account"}
  end
end

local retry_at = nil
local reason = nil
local function later(t, why)
  if retry_at == nil or t > retry_at then retry_at = t; reason = why end
end

for _, s in ipairs(scopes) do
  local req, tok, total, conc = KEYS[s.k], KEYS[s.k + 1], KEYS[s.k + 2], KEYS[s.k + 3]
  slide(req, tok, total, now, window)
  redis.call("ZREMRANGEBYSCORE", conc, "-inf", now)  -- leases of dead workers lapse
  s.known = redis.call("ZSCORE", req, job) ~= false
  if not s.known then
    window_wait(req, tok, total, s.rpm, s.tpm, est, now, window, s.name, later)
  end
  if s.conc and redis.call("ZSCORE", conc, job) == false then
    if redis.call("ZCARD", conc) >= s.conc then
      -- A finishing job wakes the account at once; this is only the fallback.
      later(now + 1000, s.name .. " concurrency limit (" .. s.conc .. ")")
    end
  end
end

if retry_at then
  -- This job is first in line now: the account wakes when it can go.
  redis.call("ZADD", KEYS[2], "NX", ARGV[7], job)
  redis.call("ZADD", KEYS[3], retry_at, ARGV[6])
  return {"waiting", tostring(retry_at), reason}
end

for _, s in ipairs(scopes) do
  local req, tok, total, conc = KEYS[s.k], KEYS[s.k + 1], KEYS[s.k + 2], KEYS[s.k + 3]
  if not s.known and (s.rpm or s.tpm) then
    redis.call("ZADD", req, now, job)
    redis.call("HSET", tok, job, est)
    redis.call("INCRBY", total, est)
  end
  if s.conc then redis.call("ZADD", conc, now + lease, job) end
  for i = 0, 3 do redis.call("PEXPIRE", KEYS[s.k + i], window + lease + 60000) end
end

redis.call("ZREM", KEYS[2], job)
local next_job = redis.call("ZRANGE", KEYS[2], 0, 0)[1]
if not next_job then redis.call("ZREM", KEYS[3], ARGV[6]) end
return {"admitted", next_job or "", #scopes > 0 and "1" or "0", "1"}
