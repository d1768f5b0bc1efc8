-- Takes the oldest queued build under a lease (`claim_next`, prelude.lua).
-- KEYS: queue, marker, inflight, leases, owners, running list of the queue
-- ARGV: owner ("<worker> <token> <queue>"), lease ms, job key prefix
-- Returns {key, document, job definition (nil when the job is gone)} or nil when the queue
-- is empty.
return claim_next(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2], ARGV[3])
