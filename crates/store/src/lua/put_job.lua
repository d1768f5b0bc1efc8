-- Creates or replaces a job definition and its folder entry together (moving the entry
-- when the folder changed), and records when its schedule was set: 'set' (new or changed
-- schedule), 'keep' (unchanged), 'clear' (none). A `concurrency` limit new to the job
-- counts the builds already queued or running against it (those that took a group's slot
-- count there, not here); a changed one admits the waiting builds it now has room for (all
-- of them when the limit is gone). A job in a concurrency group admits the group's waiting
-- builds its new limit has room for; its builds from before it joined keep the slots they
-- hold (their documents say where).
-- A definition that differs from the stored one is also recorded in the job's revisions,
-- numbered on from the newest, the list trimmed to the revisions kept.
-- KEYS: job, folder parents, old folder list, new folder list, schedules, job slots,
--       job waiting, job's recent list, group slots, group waiting (the job's own again
--       when it names no group), job revisions
-- ARGV: definition, entry, job name, expected old definition ('' none), new folder ('' root),
--       schedule change, now (seconds), concurrency limit ('' none), build key prefix,
--       queue prefix, queue marker prefix, concurrency group ('' none), job prefix, the
--       revision's JSON after its number (`"by":…,"at":…,"definition":…}`), revisions kept
local old = redis.call('GET', KEYS[1])
if (old or '') ~= ARGV[4] then return redis.error_reply('RETRY definition changed') end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  return redis.error_reply('CONFLICT a folder has this name')
end
if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[5]) == 0 then
  return redis.error_reply('NOFOLDER folder')
end
-- First of the writes, so a revisions key of the wrong type refuses before any other.
if old ~= ARGV[1] then
  local top = redis.call('LINDEX', KEYS[11], 0)
  local n = 1
  if top then n = (tonumber(string.match(top, '^{"revision":(%d+),')) or 0) + 1 end
  redis.call('LPUSH', KEYS[11], '{"revision":' .. n .. ',' .. ARGV[14])
  redis.call('LTRIM', KEYS[11], 0, tonumber(ARGV[15]) - 1)
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
local old_own = old_limit
if old then
  local ok, d = pcall(cjson.decode, old)
  if ok and type(d) == 'table' and type(d.concurrency_group) == 'string' then old_own = nil end
end
if ARGV[12] ~= '' then
  admit_waiting(KEYS[9], KEYS[10], ARGV[13], ARGV[10], ARGV[11])
else
  -- A step's result never says queued or running, so these strings can only be the build's
  -- own status: the scan reads up to a retention's worth of documents, decoding only those
  -- in flight. A build that took a group's slot says so, and frees it there.
  if limit and not old_own then
    redis.call('DEL', KEYS[6])
    for _, n in ipairs(redis.call('LRANGE', KEYS[8], 0, -1)) do
      local key = ARGV[9] .. n
      local raw = redis.call('GET', key) or ''
      if string.find(raw, '"status":"queued"', 1, true)
          or string.find(raw, '"status":"running"', 1, true) then
        local ok, d = pcall(cjson.decode, raw)
        if ok and type(d) == 'table' and type(d.concurrency_group) ~= 'string' then
          redis.call('SADD', KEYS[6], key)
        end
      end
    end
  end
  if limit ~= old_own then admit_waiting(KEYS[6], KEYS[7], ARGV[13], ARGV[10], ARGV[11]) end
  if not limit then redis.call('DEL', KEYS[6]) end
end
if old then return 0 end
return 1
