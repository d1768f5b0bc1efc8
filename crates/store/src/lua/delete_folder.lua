-- Its secrets (`kiln:folder-secrets:<name>`) go with it.
-- KEYS: folder parents, folder list, parent list, folder secrets
-- ARGV: name, entry, expected parent
local parent = redis.call('HGET', KEYS[1], ARGV[1])
if not parent then return redis.error_reply('NOTFOUND folder') end
if parent ~= ARGV[3] then return redis.error_reply('RETRY parent changed') end
if redis.call('LLEN', KEYS[2]) > 0 then return redis.error_reply('CONFLICT folder is not empty') end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('LREM', KEYS[3], 0, ARGV[2])
return 1
