-- Records a build's final state, releases its lease and hands it to every durable consumer
-- (and to the downstream one when its job names downstream jobs) in the same atomic step,
-- so a finished build is never missing from the indexer's list; then sends the build's live
-- watchers the log's last lines (when the worker held them back for this round trip) and
-- tells them it ended. Returns the oldest build number the
-- job keeps (false when none), for the worker to prune storage below it. A worker that
-- wants its next build at once names its new lease (ARGV[9]): the build's queue's oldest
-- build is then claimed in the same step (`claim_next`), one round trip per build fewer.
-- The build's concurrency slot, if its job has a limit, passes to the next waiting build.
-- KEYS: build, owners, leases, inflight, consumers set, running list, job's recent list,
--       queue, queue marker, slot set, waiting list (the job's, or its concurrency
--       group's), job, downstream consumer's list
-- ARGV: owner, document, finished prefix, events channel, event JSON, output channel,
--       end message JSON, last lines message JSON ('' none), next owner ('' claim nothing),
--       lease ms, job key prefix, started event JSON ('' none: the start was written
--       before), queue prefix, queue marker prefix, after-build marks
-- Returns {oldest kept, key, document, job definition}, the last three false unless it
-- claimed a build.
if redis.call('HGET', KEYS[2], KEYS[1]) ~= ARGV[1] then return redis.error_reply('STALE lease') end
local old = redis.call('GET', KEYS[1])
if not old then return redis.error_reply('STALE build deleted') end
redis.call('SET', KEYS[1], keep_cancel_flag(old, ARGV[2]))
redis.call('ZREM', KEYS[3], KEYS[1])
redis.call('HDEL', KEYS[2], KEYS[1])
redis.call('LREM', KEYS[4], 0, KEYS[1])
redis.call('LREM', KEYS[6], 0, KEYS[1])
push_finished(KEYS[5], ARGV[3], KEYS[1], KEYS[12], KEYS[13], ARGV[15])
free_slot(KEYS[1], KEYS[10], KEYS[11], ARGV[11], ARGV[13], ARGV[14])
if ARGV[12] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[12]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[8]) end
redis.call('PUBLISH', ARGV[6], ARGV[7])
local oldest = redis.call('LINDEX', KEYS[7], -1)
if ARGV[9] ~= '' then
  local claimed = claim_next(KEYS[8], KEYS[9], KEYS[4], KEYS[3], KEYS[2], KEYS[6], ARGV[9], ARGV[10], ARGV[11])
  if claimed then return {oldest, claimed[1], claimed[2], claimed[3]} end
end
return {oldest, false, false, false}
