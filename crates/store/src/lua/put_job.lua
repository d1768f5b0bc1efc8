-- Creates or replaces a job definition and its folder entry together (moving the entry
-- when the folder changed), and records when its schedule was set: 'set' (new or changed
-- schedule), 'keep' (unchanged), 'clear' (none). A `concurrency` limit new to the job
-- counts the builds already queued or running against it; a changed one admits the waiting
-- builds it now has room for (all of them when the limit is gone).
-- KEYS: job, folder parents, old folder list, new folder list, schedules, job slots,
--       job waiting, job's recent list
-- ARGV: definition, entry, job name, expected old definition ('' none), new folder ('' root),
--       schedule change, now (seconds), concurrency limit ('' none), build key prefix,
--       queue prefix, queue marker prefix
local old = redis.call('GET', KEYS[1])
if (old or '') ~= ARGV[4] then return redis.error_reply('RETRY definition changed') end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  return redis.error_reply('CONFLICT a folder has this name')
end
if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[5]) == 0 then
  return redis.error_reply('NOFOLDER folder')
end
if old then
  if KEYS[3] ~= KEYS[4] then
    redis.call('LREM', KEYS[3], 0, ARGV[2])
    redis.call('RPUSH', KEYS[4], ARGV[2])
  end
else
  redis.call('RPUSH', KEYS[4], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[6] == 'set' then
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[7])
elseif ARGV[6] == 'keep' then
  redis.call('HSETNX', KEYS[5], ARGV[3], ARGV[7])
else
  redis.call('HDEL', KEYS[5], ARGV[3])
end
local limit, old_limit = tonumber(ARGV[8]), concurrency_of(old)
-- A step's result never says queued or running, so these strings can only be the build's
-- own status: the scan reads up to a retention's worth of documents without decoding them.
if limit and not old_limit then
  redis.call('DEL', KEYS[6])
  for _, n in ipairs(redis.call('LRANGE', KEYS[8], 0, -1)) do
    local key = ARGV[9] .. n
    local raw = redis.call('GET', key) or ''
    if string.find(raw, '"status":"queued"', 1, true) or string.find(raw, '"status":"running"', 1, true) then
      redis.call('SADD', KEYS[6], key)
    end
  end
end
if limit ~= old_limit then admit_waiting(KEYS[6], KEYS[7], limit, ARGV[10], ARGV[11]) end
if old then return 0 end
return 1
