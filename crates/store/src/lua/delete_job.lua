-- Deletes a job with its entry, counter and every build document it still has; queued
-- builds leave their queue and running ones lose their lease, their worker told over the
-- cancel channel to stop them at once (the lost lease, seen at the next renew, is the
-- guarantee).
-- KEYS: job, recent, folder list, counters, leases, owners, queue, running list, schedules,
--       job slots, job waiting
-- ARGV: expected definition, entry, job name, build key prefix, cancel channel
local def = redis.call('GET', KEYS[1])
if not def then return redis.error_reply('NOTFOUND job') end
if def ~= ARGV[1] then return redis.error_reply('RETRY definition changed') end
local docs = {}
for _, n in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local key = ARGV[4] .. n
  local doc = redis.call('GET', key)
  if doc then table.insert(docs, doc) end
  redis.call('DEL', key)
  redis.call('LREM', KEYS[7], 0, key)
  if redis.call('ZREM', KEYS[5], key) > 0 then redis.call('PUBLISH', ARGV[5], key) end
  redis.call('HDEL', KEYS[6], key)
  redis.call('LREM', KEYS[8], 0, key)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[10], KEYS[11])
redis.call('LREM', KEYS[3], 0, ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HDEL', KEYS[9], ARGV[3])
return docs
