-- Deletes a job with its entry, counter and every build document it still has; queued
-- builds leave their queue and running ones lose their lease, their worker told over the
-- cancel channel to stop them at once (the lost lease, seen at the next renew, is the
-- guarantee). Builds holding or waiting for a concurrency group's slot leave the group,
-- whose next waiting builds then take the freed slots.
-- KEYS: job, recent, folder list, counters, leases, owners, queue, running list, schedules,
--       job slots, job waiting, job revisions
-- ARGV: expected definition, entry, job name, build key prefix, cancel channel, group slots
--       prefix, group waiting prefix, job prefix, queue prefix, queue marker prefix
local def = redis.call('GET', KEYS[1])
if not def then return redis.error_reply('NOTFOUND job') end
if def ~= ARGV[1] then return redis.error_reply('RETRY definition changed') end
local docs, groups = {}, {}
for _, n in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local key = ARGV[4] .. n
  local doc = redis.call('GET', key)
  if doc then
    table.insert(docs, doc)
    local ok, d = pcall(cjson.decode, doc)
    local group = ok and type(d) == 'table' and d.concurrency_group
    if type(group) == 'string' then
      redis.call('SREM', ARGV[6] .. group, key)
      redis.call('LREM', ARGV[7] .. group, 0, key)
      groups[group] = true
    end
  end
  redis.call('DEL', key)
  redis.call('LREM', KEYS[7], 0, key)
  if redis.call('ZREM', KEYS[5], key) > 0 then redis.call('PUBLISH', ARGV[5], key) end
  redis.call('HDEL', KEYS[6], key)
  redis.call('LREM', KEYS[8], 0, key)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[10], KEYS[11], KEYS[12])
redis.call('LREM', KEYS[3], 0, ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HDEL', KEYS[9], ARGV[3])
for group in pairs(groups) do
  admit_waiting(ARGV[6] .. group, ARGV[7] .. group, ARGV[8], ARGV[9], ARGV[10])
end
return docs
