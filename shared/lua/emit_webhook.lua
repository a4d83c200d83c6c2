-- One webhook event appended to the outbox, once per idempotency key: a caller that may run twice
-- (a retried call, two workers) appends it once.
-- KEYS: 1 the outbox stream, 2 the idempotency key's flag (the outbox again when there is none)
-- ARGV: 1 the event (JSON), 2 its account id or "", 3 the outbox's cap, 4 the flag's TTL s,
--       5 the event id, 6 "1" when there is an idempotency key
-- Returns the outbox entry's id, or false when the key was emitted already.
if ARGV[6] == "1" and not redis.call("SET", KEYS[2], ARGV[5], "NX", "EX", tonumber(ARGV[4])) then
  return false
end
return redis.call("XADD", KEYS[1], "MAXLEN", "~", tonumber(ARGV[3]), "*", "event", ARGV[1], "account", ARGV[2])
