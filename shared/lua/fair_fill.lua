-- The sweeper's pass over an account's share of a queue (the account's slot). The jobs handed
-- out longer than the look-again time ago are named again (a lost worker may have left one
-- held back after admit.lua handed it out, or it was handed out before its record was written:
-- releasing one twice queues it once, release_job.lua); those of them past the stale time no
-- longer hold a place (no worker took them: their message was lost, and the reaper queues them
-- again). The free places then go to the first held-back jobs.
-- KEYS: 1 queued zset, 2 ready zset, 3 fair accounts zset
-- ARGV: 1 now ms, 2 places, 3 stale ms, 4 "{account}|{queue}", 5 look-again ms
-- Returns the job ids to release. The account stays listed while it has jobs queued or held back.
local now = tonumber(ARGV[1])
local out = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[5]), "WITHSCORES", "LIMIT", 0, 200)
local again = {}
for i = 1, #out, 2 do
  again[#again + 1] = out[i]
  if tonumber(out[i + 1]) < now - tonumber(ARGV[3]) then redis.call("ZREM", KEYS[1], out[i]) end
end
local places = tonumber(ARGV[2]) - redis.call("ZCARD", KEYS[1])
if places > 0 then
  local popped = redis.call("ZPOPMIN", KEYS[2], places)
  for i = 1, #popped, 2 do
    again[#again + 1] = popped[i]
    redis.call("ZADD", KEYS[1], now, popped[i])
  end
end
if redis.call("EXISTS", KEYS[2]) == 1 or redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("ZADD", KEYS[3], now, ARGV[4])
else
  redis.call("ZREM", KEYS[3], ARGV[4])
end
return again
