-- Append events to a job's stream and publish them live, fenced by the attempt's lease.
-- KEYS: events stream, live channel, lease, cancel flag
-- ARGV: attempt token, max stream length, retention s, then (seq, type, data) triples
-- Returns -1 when the attempt lost the job (nothing written), else 1 if a cancel was
-- requested, 0 if not.
if redis.call("GET", KEYS[3]) ~= ARGV[1] then return -1 end
for i = 4, #ARGV, 3 do
  redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[2], "0-" .. ARGV[i], "t", ARGV[i + 1], "d", ARGV[i + 2])
  redis.call("PUBLISH", KEYS[2], ARGV[i] .. "\n" .. ARGV[i + 1] .. "\n" .. ARGV[i + 2])
end
redis.call("EXPIRE", KEYS[1], ARGV[3])
return redis.call("EXISTS", KEYS[4])
