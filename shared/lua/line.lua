-- An account's waiting line and its wake-up time, in the account's slot; the job's own state
-- is in the job's slot, changed between two calls of this script (requeue_waiting.lua) or
-- before one (cancel_job.lua). Whatever the steps in between, a line is never left without a
-- wake-up.
-- KEYS: account waiting zset, throttled accounts zset
-- ARGV: job id, account id, action, now ms, watchdog ms
--   turn:     whether the job is first in line (1/0); if not, the line keeps a wake-up
--   requeued: the job went back to its queue: the account looks again at the watchdog, unless
--             another job took the first place meanwhile (its own wake-up stays)
--   busy:     the job is mid-admission or on its way: look again very soon
--   gone:     the job finished or expired: out of the line, the next one gets its turn at once
--   leave:    the job was cancelled: likewise, if it was in the line
local first = redis.call("ZRANGE", KEYS[1], 0, 0)[1]
local action = ARGV[3]
local function wake(at)
  if redis.call("ZCARD", KEYS[1]) > 0 then redis.call("ZADD", KEYS[2], at, ARGV[2]) end
end
if action == "turn" then
  if first == ARGV[1] then return 1 end
  if first and redis.call("ZSCORE", KEYS[2], ARGV[2]) == false then
    redis.call("ZADD", KEYS[2], ARGV[4], ARGV[2])
  end
  return 0
elseif action == "requeued" then
  if first == ARGV[1] then
    redis.call("ZADD", KEYS[2], ARGV[5], ARGV[2])
  elseif first and redis.call("ZSCORE", KEYS[2], ARGV[2]) == false then
    redis.call("ZADD", KEYS[2], ARGV[4], ARGV[2])
  end
elseif action == "busy" then
  redis.call("ZADD", KEYS[2], tonumber(ARGV[4]) + 100, ARGV[2])
elseif action == "gone" then
  redis.call("ZREM", KEYS[1], ARGV[1])
  wake(ARGV[4])
elseif action == "leave" then
  if redis.call("ZREM", KEYS[1], ARGV[1]) == 1 then wake(ARGV[4]) end
end
return 0
