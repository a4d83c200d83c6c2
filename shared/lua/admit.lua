-- Admit a job under its account's limits, atomically, in one round trip (the account's slot;
-- the provider deployment's limits are admitted after it, in theirs: admit_deployment.lua, and
-- a refusal there gives this admission back: unadmit.lua).
--
-- Three rate scopes, each a sliding window of the last ARGV[2] ms plus concurrency leases:
--   1. the account (limits from its hash: rpm, tpm, max_concurrency),
--   2. the account for this model (model_limits JSON in the account hash, by model id),
--   3. the API key the job was submitted with (its limits hash).
-- Per scope: req (zset job -> admit ms), tok (hash job -> tokens), total (string: sum of tok),
-- conc (zset job -> lease expiry ms).
-- Two budgets, the account's and the key's (budget_nanousd, budget_period day|month|total):
-- the job holds its worst-case cost (ARGV[10]) in each until it is settled (settle.lua); a job
-- that cannot fit beside what others hold waits, one that cannot fit at all is refused.
--
-- Jobs of an account are admitted in submission order: while the account has waiting jobs, a
-- job that is not the first of them waits behind it.
--
-- Fair share: the job has left its queue's broker list, so its place in the account's share
-- of it is free (KEYS[21]); jobs of the account held back (KEYS[22]) take the free places,
-- and are named in the reply for the caller to hand to the broker.
--
-- KEYS: 1 account hash, 2 account waiting zset, 3 throttled accounts zset,
--       4..7 account scope (req, tok, total, conc), 8..11 model scope, 12..15 key scope,
--       16 key limits hash, 17 account budget hash, 18 key budget hash, 19 budget holds hash,
--       20 budget due zset, 21 fair-share queued zset, 22 fair-share ready zset,
--       23 fair-share accounts zset
-- ARGV: 1 now ms, 2 window ms, 3 job id, 4 estimated tokens, 5 lease ms, 6 account id,
--       7 job line score, 8 model id, 9 key id ("" for none), 10 worst-case cost nano-USD,
--       11 day id, 12 month id, 13 fair-share places per account on the queue, 14 queue name,
--       15 the attempt's number
-- A scope without any limit is skipped (no commands). Returns
-- {"admitted", released, next waiting job or "", "1" if the job holds anything to settle else
--  "0", "1" if admitted now, "0" if this was an admission made again, "1" if a budget holds it}
--       | {"waiting", released, retry at ms, reason} | {"too_large", released, reason}
--       | {"over_budget", released, reason, "scope|period id|100|budget|spent" (_budget.lua's form)}
-- (released: the ids of the account's held-back jobs now handed out, comma-separated)
--#include _window
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local job = ARGV[3]
local est = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local cost = tonumber(ARGV[10])

-- Fair share, whatever the outcome: out of the queue, and the free places handed out.
-- Handed out half the places at a time (one hand-out, and one push, for many jobs: a busy
-- account's jobs are not each released alone).
local released = ""
do
  redis.call("ZREM", KEYS[21], job)
  local share = tonumber(ARGV[13])
  local places = share - redis.call("ZCARD", KEYS[21])
  if places > 0 and places * 2 >= share and redis.call("EXISTS", KEYS[22]) == 1 then
    local out = redis.call("ZPOPMIN", KEYS[22], places)
    local ids = {}
    for i = 1, #out, 2 do
      ids[#ids + 1] = out[i]
      redis.call("ZADD", KEYS[21], now, out[i])
    end
    released = table.concat(ids, ",")
    -- The sweeper looks at the account until it has nothing queued or held back.
    redis.call("ZADD", KEYS[23], "NX", now, ARGV[6] .. "|" .. ARGV[14])
  end
end

local acct = redis.call("HMGET", KEYS[1], "rpm", "tpm", "max_concurrency", "model_limits",
                        "budget_nanousd", "budget_period")
local model_rpm, model_tpm, model_conc
if acct[4] then
  local ok, all = pcall(cjson.decode, acct[4])
  if ok and type(all) == "table" and type(all[ARGV[8]]) == "table" then
    local m = all[ARGV[8]]
    model_rpm, model_tpm, model_conc = limit(m.rpm), limit(m.tpm), limit(m.max_concurrency)
  end
end
local key = {}
if ARGV[9] ~= "" then
  key = redis.call("HMGET", KEYS[16], "rpm", "tpm", "max_concurrency", "budget_nanousd", "budget_period")
end
local scopes = {
  {k = 4, rpm = limit(acct[1]), tpm = limit(acct[2]), conc = limit(acct[3]), name = "account"},
  {k = 8, rpm = model_rpm, tpm = model_tpm, conc = model_conc, name = "account model"},
  {k = 12, rpm = limit(key[1]), tpm = limit(key[2]), conc = limit(key[3]), name = "API key"},
}

local active = {}
for _, s in ipairs(scopes) do
  if s.rpm or s.tpm or s.conc then active[#active + 1] = s end
end
scopes = active

-- The budgets that apply, each with its period's id.
local function period_id(period)
  if period == "day" then return ARGV[11] elseif period == "total" then return "total" end
  return ARGV[12]  -- a month, unless set otherwise
end
local budgets = {}
if limit(acct[5]) then
  budgets[#budgets + 1] = {key = KEYS[17], limit = limit(acct[5]), pid = period_id(acct[6]), name = "account", scope = "account"}
end
if limit(key[4]) then
  budgets[#budgets + 1] = {key = KEYS[18], limit = limit(key[4]), pid = period_id(key[5]), name = "API key", scope = "key"}
end
-- The job's budget hold ("cost|account period|key id|key period|attempt"), if an attempt of it
-- was admitted: this one (its reply lost) or an earlier one (its worker lost), which needs no
-- second reservation.
local hold = #budgets > 0 and redis.call("HGET", KEYS[19], job)
local holds_budget = hold and true or false
local same_attempt = holds_budget and string.match(hold, "|([^|]*)$") == ARGV[15]

-- A request that could never be admitted must not wait forever.
for _, s in ipairs(scopes) do
  if s.rpm == 0 or s.conc == 0 then
    return {"too_large", released, s.name .. " limit is 0: nothing can be admitted"}
  end
  if s.tpm and est > s.tpm then
    return {"too_large", released, s.name .. " tokens-per-window limit is " .. s.tpm .. ", the request needs up to " .. est}
  end
end

-- Nor one its budget has no room left for: spent so far, and its own worst case.
local function usd(nano) return string.format("%.6f", nano / 1e9) end
local function int(n) return string.format("%.0f", n) end  -- not "1e+14": Lua 5.1 writes %.14g
if not holds_budget then
  for _, b in ipairs(budgets) do
    b.spent = tonumber(redis.call("HGET", b.key, "spent:" .. b.pid) or "0")
    b.reserved = tonumber(redis.call("HGET", b.key, "reserved:" .. b.pid) or "0")
    if b.spent + cost > b.limit then
      return {"over_budget", released, b.name .. " budget of $" .. usd(b.limit) .. " (" .. b.pid .. ") has $"
              .. usd(math.max(b.limit - b.spent, 0)) .. " left; the request may cost up to $" .. usd(cost),
              b.scope .. "|" .. b.pid .. "|100|" .. int(b.limit) .. "|" .. int(b.spent)}
    end
  end
end

-- This admission made again (its reply was lost): the job holds it already, in every scope (in
-- the window of each rate-limited one, with a live lease in each capped one, and its budget
-- hold). The same answer, whatever joined the account's line meanwhile.
if #scopes > 0 or #budgets > 0 then
  local held = #budgets == 0 or same_attempt
  for _, s in ipairs(scopes) do
    if not held then break end
    if (s.rpm or s.tpm) and redis.call("ZSCORE", KEYS[s.k], job) == false then held = false; break end
    local until_ms = s.conc and redis.call("ZSCORE", KEYS[s.k + 3], job)
    if s.conc and (not until_ms or tonumber(until_ms) <= now) then held = false; break end
  end
  if held then
    return {"admitted", released, redis.call("ZRANGE", KEYS[2], 0, 0)[1] or "", "1", "0",
            #budgets > 0 and "1" or "0"}
  end
end

-- Order: only the first waiting job of the account may be admitted. A job submitted before
-- the first in line (its delivery was slower than a later job's) takes that place, and with it
-- the duty to set the account's wake-up time: the one there may be a requeue's watchdog.
-- (Redis's own order decides, ties included: the job joins the line and looks at its rank.)
-- A job that holds a budget hold was admitted in its turn already (its worker was lost since):
-- it goes ahead, or a job waiting for that very hold to settle would wait forever.
local head = redis.call("ZRANGE", KEYS[2], 0, 0)[1]
if head and head ~= job and not holds_budget then
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
    return {"waiting", released, tostring(at), "waiting behind " .. ahead .. " earlier job(s) of the account"}
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
if not holds_budget then
  for _, b in ipairs(budgets) do
    if b.spent + b.reserved + cost > b.limit then
      -- Room comes back as running jobs settle (each wakes the account); this is the fallback.
      later(now + 1000, b.name .. " budget: $" .. usd(b.reserved) .. " is held by running jobs")
    end
  end
end

if retry_at then
  -- This job is first in line now: the account wakes when it can go.
  redis.call("ZADD", KEYS[2], "NX", ARGV[7], job)
  redis.call("ZADD", KEYS[3], retry_at, ARGV[6])
  return {"waiting", released, tostring(retry_at), reason}
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
if holds_budget then
  -- This attempt's now (an earlier one's, whose worker was lost, reserved it).
  redis.call("HSET", KEYS[19], job, string.match(hold, "^(.*|)[^|]*$") .. ARGV[15])
elseif #budgets > 0 then
  local hold = {ARGV[10], "", ARGV[9], "", ARGV[15]}
  for _, b in ipairs(budgets) do
    redis.call("HINCRBY", b.key, "reserved:" .. b.pid, cost)
    if b.key == KEYS[17] then hold[2] = b.pid else hold[4] = b.pid end
    -- Periods gone by are forgotten (their late settlements recreate a field at most).
    if redis.call("HLEN", b.key) > 24 then
      local fields = redis.call("HKEYS", b.key)
      for _, f in ipairs(fields) do
        local pid = string.match(f, ":(.*)$")
        if pid ~= ARGV[11] and pid ~= ARGV[12] and pid ~= "total" then redis.call("HDEL", b.key, f) end
      end
    end
  end
  redis.call("HSET", KEYS[19], job, table.concat(hold, "|"))
  redis.call("ZADD", KEYS[20], now + lease, ARGV[6] .. "|" .. job)
end

redis.call("ZREM", KEYS[2], job)
local next_job = redis.call("ZRANGE", KEYS[2], 0, 0)[1]
if not next_job then redis.call("ZREM", KEYS[3], ARGV[6]) end
return {"admitted", released, next_job or "", (#scopes > 0 or #budgets > 0) and "1" or "0", "1",
        #budgets > 0 and "1" or "0"}
