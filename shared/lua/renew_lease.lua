-- Extend the lease of a running attempt; 0 when the attempt no longer owns the job.
-- KEYS: lease, running zset, cancel flag
-- ARGV: attempt token, lease ms, now (unix s), job id
-- Returns {owned (0|1), cancel requested (0|1)}
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return {0, 0} end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
redis.call("ZADD", KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[2]) / 1000, ARGV[4])
return {1, redis.call("EXISTS", KEYS[3])}
