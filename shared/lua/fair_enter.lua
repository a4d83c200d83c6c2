-- Fair share, as a job is submitted (the account's slot, before the job is recorded): the job
-- may go straight to its queue's broker list while its account has fewer than its places
-- there and none held back; otherwise it is held back in the account's ready line, handed out
-- as the account's queued jobs are taken (admit.lua) or by the sweeper (fair_fill.lua). The
-- account is listed for the sweeper, which frees the places of jobs no worker ever took.
-- KEYS: 1 the account's queued zset for the queue, 2 its ready zset, 3 the shard's fair accounts
-- ARGV: 1 job id, 2 now ms, 3 places, 4 ready score, 5 "{account}|{queue}"
-- Returns "go" | "hold".
redis.call("ZADD", KEYS[3], "NX", ARGV[2], ARGV[5])
if redis.call("EXISTS", KEYS[2]) == 0 and redis.call("ZCARD", KEYS[1]) < tonumber(ARGV[3]) then
  redis.call("ZADD", KEYS[1], ARGV[2], ARGV[1])
  return "go"
end
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[1])
return "hold"
