-- Moves the oldest queued build into the worker's in-flight list and leases it to the
-- worker under a fresh random token, in one step: no moment exists where a build is
-- neither queued nor leased.
-- KEYS: queue, marker, inflight, leases, owners, running list of the queue
-- ARGV: owner ("<worker> <token> <queue>"), lease ms, job key prefix
-- Returns {key, document, job definition (nil when the job is gone)} or nil when the queue
-- is empty. The definition comes along so the worker can start the first step at once.
for _ = 1, 1000 do
  local key = redis.call('RPOP', KEYS[1])
  if not key then return nil end
  local doc = redis.call('GET', key)
  -- Entries whose document was deleted (job deleted, trimmed) are dropped.
  if doc then
    redis.call('LPUSH', KEYS[3], key)
    redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[2]), key)
    redis.call('HSET', KEYS[5], key, ARGV[1])
    redis.call('LPUSH', KEYS[6], key)
    -- Another idle worker may take the next one.
    if redis.call('LLEN', KEYS[1]) > 0 then redis.call('ZADD', KEYS[2], 0, '0') end
    return {key, doc, redis.call('GET', ARGV[3] .. job_of(doc))}
  end
end
return nil
