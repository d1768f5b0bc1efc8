-- Hands a build back to the head of its queue (graceful shutdown); the attempt is not counted.
-- KEYS: build, owners, leases, inflight, queue, marker, running list
-- ARGV: owner, document (queued again), events channel, event JSON
if redis.call('HGET', KEYS[2], KEYS[1]) ~= ARGV[1] then return redis.error_reply('STALE lease') end
if not redis.call('GET', KEYS[1]) then return redis.error_reply('STALE build deleted') end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[3], KEYS[1])
redis.call('HDEL', KEYS[2], KEYS[1])
redis.call('LREM', KEYS[4], 0, KEYS[1])
redis.call('LREM', KEYS[7], 0, KEYS[1])
redis.call('RPUSH', KEYS[5], KEYS[1])
redis.call('ZADD', KEYS[6], 0, '0')
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
