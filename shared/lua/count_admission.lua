-- An admission that makes a provider call (not one made again): the job's record counts it, and
-- keeps when the first one was. Should the job's workers all be lost, its bill counts the
-- prompts sent (shared/jobs.py). A job gone (expired) is not written again.
-- KEYS: job hash
-- ARGV: now (unix s, as text)
if redis.call("EXISTS", KEYS[1]) == 0 then return 0 end
redis.call("HSETNX", KEYS[1], "started_at", ARGV[1])
redis.call("HINCRBY", KEYS[1], "admitted", 1)
return 1
