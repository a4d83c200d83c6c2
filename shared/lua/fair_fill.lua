-- The sweeper's hand-out for an account with jobs held back (the account's slot): places whose
-- job no worker took in the stale time are freed, the free places given to the first held-back
-- jobs, and the queued ones older than the stale time named again (a lost worker may have left
-- them unqueued: releasing one twice queues it once, release_job.lua).
-- KEYS: 1 queued zset, 2 ready zset, 3 fair accounts zset
-- ARGV: 1 now ms, 2 places, 3 stale ms, 4 "{account}|{queue}", 5 look-again ms
-- Returns the job ids to release. The account stays listed while it has jobs queued or held back.
local now = tonumber(ARGV[1])
local stale = tonumber(ARGV[3])
local again = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[5]), "LIMIT", 0, 100)
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - stale)
local places = tonumber(ARGV[2]) - redis.call("ZCARD", KEYS[1])
local out = {}
if places > 0 then
  local popped = redis.call("ZPOPMIN", KEYS[2], places)
  for i = 1, #popped, 2 do
    out[#out + 1] = popped[i]
    redis.call("ZADD", KEYS[1], now, popped[i])
  end
end
for _, j in ipairs(again) do out[#out + 1] = j end
if redis.call("EXISTS", KEYS[2]) == 1 or redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("ZADD", KEYS[3], now, ARGV[4])
else
  redis.call("ZREM", KEYS[3], ARGV[4])
end
return out
