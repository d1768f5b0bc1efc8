-- Creates or replaces a job definition and its folder entry together (moving the entry
-- when the folder changed), and records when its schedule was set: 'set' (new or changed
-- schedule), 'keep' (unchanged), 'clear' (none).
-- KEYS: job, folder parents, old folder list, new folder list, schedules
-- ARGV: definition, entry, job name, expected old definition ('' none), new folder ('' root),
--       schedule change, now (seconds)
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
if old then return 0 end
return 1
