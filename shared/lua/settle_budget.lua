-- Settle a job's budget hold on its own: the sweeper's, for a job whose worker was lost after
-- it finished (or that ended without a worker), from the cost its record keeps.
-- KEYS: holds hash, due zset, account hash, key limits hash, account budget hash, key budget hash
-- ARGV: 1 job id, 2 account id, 3 real cost nano-USD
-- Returns the thresholds newly crossed (see _budget.lua).
--#include _budget
return settle_budget(KEYS, ARGV[1], ARGV[2], tonumber(ARGV[3]))
