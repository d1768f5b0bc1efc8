-- The retention sweep of one job: trims its recent list by age (and count) as its next
-- trigger would, for jobs nobody triggers. No worker may build the job again to clear away
-- the removed builds' folders, so every one goes onto the storage orphans list.
-- KEYS: recent, storage orphans
-- ARGV: build key prefix, retention (builds), the oldest `finished_at` a build may have
-- Returns how many builds went.
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'list' then return 0 end
local o = redis.call('TYPE', KEYS[2]).ok
if o ~= 'none' and o ~= 'list' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. o .. ', not a list')
end
return trim_recent(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], KEYS[2], true)
