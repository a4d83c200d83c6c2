-- Hold room for an account's file, atomically, so that concurrent uploads cannot together pass
-- the account's bounds (files and bytes): each upload holds its size before it is stored.
-- KEYS: the account's held files (hash: file id -> "bytes|held until", unix seconds).
-- ARGV: file id, bytes to add, the most files, the most bytes, now, held until, the hash's TTL.
-- Entries past their time are dropped (an upload that died, a file that expired). A file already
-- held only grows; a new one must fit the count. Returns {0} when held, {1, files} when the
-- account keeps the most files it may, {2, bytes} when the bytes would pass the bound.
local id, add = ARGV[1], tonumber(ARGV[2])
local max_files, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, until_ = tonumber(ARGV[5]), ARGV[6]
local held = redis.call("HGETALL", KEYS[1])
local files, bytes, mine, present = 0, 0, 0, false
for i = 1, #held, 2 do
  local sep = string.find(held[i + 1], "|", 1, true)
  local size = tonumber(string.sub(held[i + 1], 1, sep - 1))
  if tonumber(string.sub(held[i + 1], sep + 1)) <= now then
    redis.call("HDEL", KEYS[1], held[i])
  elseif held[i] == id then
    mine, present = size, true
  else
    files, bytes = files + 1, bytes + size
  end
end
if not present and files >= max_files then
  return {1, files}
end
if bytes + mine + add > max_bytes then
  return {2, bytes + mine}
end
redis.call("HSET", KEYS[1], id, (mine + add) .. "|" .. until_)
if redis.call("TTL", KEYS[1]) < tonumber(ARGV[7]) then
  redis.call("EXPIRE", KEYS[1], ARGV[7])
end
return {0}
