-- End an attempt: final job fields, last events and release, in one step, fenced by the lease.
-- KEYS: job hash, lease, running zset, events stream, live channel
-- ARGV: attempt token, status, now, retention s, max stream length, job id,
--       n field pairs, field/value pairs..., then (seq, type, data) triples
-- Returns 1, or 0 when the attempt no longer owns the job (nothing written).
if redis.call("GET", KEYS[2]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[7])
local fields = {"status", ARGV[2], "updated_at", ARGV[3]}
for i = 8, 7 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call("HSET", KEYS[1], unpack(fields))
for i = 8 + 2 * n, #ARGV, 3 do
  redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[5], "0-" .. ARGV[i], "t", ARGV[i + 1], "d", ARGV[i + 2])
  redis.call("PUBLISH", KEYS[5], ARGV[i] .. "\n" .. ARGV[i + 1] .. "\n" .. ARGV[i + 2])
end
redis.call("DEL", KEYS[2])
redis.call("ZREM", KEYS[3], ARGV[6])
redis.call("EXPIRE", KEYS[1], ARGV[4])
redis.call("EXPIRE", KEYS[4], ARGV[4])
return 1
