-- Record a new job and queue it, at once (a job is never recorded without being queued).
-- A replay (the reply to a first run was lost, and the call made again) changes nothing.
-- KEYS: job hash, queue list, queued jobs zset, account's jobs zset
-- ARGV: job id, now, retention seconds, Celery message, then the record's fields and values
--#include _enqueue
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], unpack(ARGV, 5))
enqueue(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[4], ARGV[2])
redis.call("EXPIRE", KEYS[1], ARGV[3])
redis.call("ZADD", KEYS[4], ARGV[2], ARGV[1])
redis.call("EXPIRE", KEYS[4], ARGV[3])
return 1
