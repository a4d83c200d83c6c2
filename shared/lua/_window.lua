-- Included by the admission scripts: one scope's sliding window of the last ``window`` ms
-- (req: zset job -> admit ms, tok: hash job -> tokens, total: their sum).

-- A limit as stored or passed: a number, or nil for none (absent, or negative).
local function limit(v)
  local n = tonumber(v)
  if n == nil or n < 0 then return nil end
  return n
end

-- Forget admissions older than the window, and their tokens.
local function slide(req, tok, total, now, window)
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
end

-- For a job not yet in the window: ``later(at ms, reason)`` for each of the scope's limits
-- (rpm, tpm; nil: none) that it would break now, ``at`` when it no longer would.
local function window_wait(req, tok, total, rpm, tpm, est, now, window, name, later)
  if rpm then
    local count = redis.call("ZCARD", req)
    if count >= rpm then
      local nth = redis.call("ZRANGE", req, count - rpm, count - rpm, "WITHSCORES")
      later(tonumber(nth[2]) + window + 1, name .. " requests-per-window limit (" .. rpm .. ")")
    end
  end
  if tpm then
    local used = tonumber(redis.call("GET", total) or "0")
    if used + est > tpm then
      -- When will enough of the window's tokens have slid out?
      local entries = redis.call("ZRANGE", req, 0, -1, "WITHSCORES")
      local freed = 0
      local at = now + window
      for i = 1, #entries, 2 do
        freed = freed + (tonumber(redis.call("HGET", tok, entries[i])) or 0)
        if used - freed + est <= tpm then at = tonumber(entries[i + 1]) + window + 1; break end
      end
      later(at, name .. " tokens-per-window limit (" .. tpm .. ")")
    end
  end
end

-- When the scope's window has room for ``n`` more admissions of ``est`` tokens each (rpm, tpm;
-- nil: none): ``now`` if it has it already. Past the admissions in the window, whole windows.
local function room_at(req, tok, total, rpm, tpm, est, n, now, window)
  local at = now
  if rpm then
    local count = redis.call("ZCARD", req)
    local leave = count + n - rpm  -- admissions that must leave the window first
    if leave > 0 then
      if leave <= count then
        local nth = redis.call("ZRANGE", req, leave - 1, leave - 1, "WITHSCORES")
        at = math.max(at, tonumber(nth[2]) + window + 1)
      else
        -- Every admission in the window leaves first (by the newest's time), then ``rpm`` a window.
        local newest = count > 0 and tonumber(redis.call("ZRANGE", req, -1, -1, "WITHSCORES")[2]) or now
        at = math.max(at, newest + window + 1 + window * math.floor((leave - 1) / rpm))
      end
    end
  end
  if tpm then
    local used = tonumber(redis.call("GET", total) or "0")
    if used + est * n > tpm then
      local entries = redis.call("ZRANGE", req, 0, -1, "WITHSCORES")
      local freed, t = 0, nil
      for i = 1, #entries, 2 do
        freed = freed + (tonumber(redis.call("HGET", tok, entries[i])) or 0)
        if used - freed + est * n <= tpm then t = tonumber(entries[i + 1]) + window + 1; break end
      end
      at = math.max(at, t or (now + window * math.ceil(est * n / tpm + 1)))
    end
  end
  return at
end
