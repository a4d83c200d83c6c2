-- Claim the webhook deliveries that are due: each is scored by when its claim lapses, so that no
-- other worker attempts it meanwhile, and one whose worker was lost is attempted again then.
-- KEYS: 1 the schedule (sorted set), 2 the deliveries' state (hash)
-- ARGV: 1 now (unix s), 2 the claim's length s, 3 how many at most
-- Returns {member, state, member, state, ...}; a member with no state left is dropped.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[3]))
local claimed_until = tonumber(ARGV[1]) + tonumber(ARGV[2])
local out = {}
for _, member in ipairs(due) do
  local state = redis.call("HGET", KEYS[2], member)
  if state then
    redis.call("ZADD", KEYS[1], claimed_until, member)
    out[#out + 1] = member
    out[#out + 1] = state
  else
    redis.call("ZREM", KEYS[1], member)
  end
end
return out
