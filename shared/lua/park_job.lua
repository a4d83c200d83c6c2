-- A job that may not run yet goes back to waiting: its slot is freed (the task ends), it is
-- marked throttled with the time of its next try, and subscribers are told. Fenced by the lease.
-- A job whose cancellation was requested meanwhile is not parked (it would wait, first in its
-- account's line, to be admitted only to stop): its attempt ends it as cancelled.
-- KEYS: job hash, lease, running zset, events stream, live channel, cancel flag
-- ARGV: attempt token, now, next try (unix s), reason, seq, event data, retention s, job id
-- Returns 1 when parked, 0 when the attempt lost the job, 2 when a cancel was requested.
--#include _replayed
if redis.call("GET", KEYS[2]) ~= ARGV[1] then
  return replayed(KEYS[1], ARGV[1], "throttled", ARGV[2]) and 1 or 0
end
if redis.call("EXISTS", KEYS[6]) == 1 then return 2 end
redis.call("HSET", KEYS[1], "status", "throttled", "updated_at", ARGV[2], "next_try_at", ARGV[3],
           "throttle_reason", ARGV[4])
-- Waiting is not a delivery: it must not count towards the redelivery cap.
redis.call("HINCRBY", KEYS[1], "attempts", -1)
redis.call("DEL", KEYS[2])
redis.call("ZREM", KEYS[3], ARGV[8])
redis.call("XADD", KEYS[4], "0-" .. ARGV[5], "t", "throttled", "d", ARGV[6])
redis.call("PUBLISH", KEYS[5], ARGV[5] .. "\nthrottled\n" .. ARGV[6])
redis.call("EXPIRE", KEYS[4], ARGV[7])
return 1
