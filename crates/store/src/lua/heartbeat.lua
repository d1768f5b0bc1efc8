-- One call per worker per renew interval: extends the leases it still holds, says which
-- are stale (taken from it) or cancelled and whether an operator paused the worker, and
-- records the worker as alive.
-- KEYS: workers, queue workers, node, leases, owners, paused workers
-- ARGV: worker, node JSON, node ttl ms, lease ms, nodes channel, then key, owner pairs
local now = now_ms()
local stale, cancelled = {}, {}
for i = 6, #ARGV, 2 do
  local key, owner = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[5], key) == owner and redis.call('ZSCORE', KEYS[4], key) then
    redis.call('ZADD', KEYS[4], 'XX', now + tonumber(ARGV[4]), key)
    local doc = redis.call('GET', key)
    if doc and string.find(doc, '"cancel_requested":true', 1, true) then
      table.insert(cancelled, key)
    end
  else
    table.insert(stale, key)
  end
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
redis.call('SET', KEYS[3], ARGV[2], 'PX', ttl)
redis.call('PUBLISH', ARGV[5], ARGV[2])
return {stale, cancelled, redis.call('SISMEMBER', KEYS[6], ARGV[1])}
