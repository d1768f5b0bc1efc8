-- KEYS: folder parents, parent list, job with the same name
-- ARGV: name, parent ('' root), entry
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return redis.error_reply('CONFLICT folder exists') end
if redis.call('EXISTS', KEYS[3]) == 1 then return redis.error_reply('CONFLICT a job has this name') end
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return redis.error_reply('NOFOLDER parent')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
