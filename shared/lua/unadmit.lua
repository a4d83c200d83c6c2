-- Give back an account's admission of a job that its provider deployment refused
-- (admit_deployment.lua): its share of the account's scopes is released, and it is first in
-- its account's line again (by its submission time), the account woken when the deployment
-- can take it.
-- KEYS: 1 account waiting zset, 2 throttled accounts zset, 3..10 the account's two scopes
--       (req, tok, total, conc each)
-- ARGV: 1 job id, 2 account id, 3 job submission score, 4 retry at ms
for s = 0, 1 do
  local req, tok, total, conc = KEYS[3 + 4 * s], KEYS[4 + 4 * s], KEYS[5 + 4 * s], KEYS[6 + 4 * s]
  local reserved = redis.call("HGET", tok, ARGV[1])
  if reserved then
    redis.call("HDEL", tok, ARGV[1])
    redis.call("DECRBY", total, reserved)
  end
  redis.call("ZREM", req, ARGV[1])
  redis.call("ZREM", conc, ARGV[1])
end
redis.call("ZADD", KEYS[1], "NX", ARGV[3], ARGV[1])
redis.call("ZADD", KEYS[2], ARGV[4], ARGV[2])
return 1
