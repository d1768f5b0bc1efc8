-- Pins or unpins an ended build: sets or removes its document's `keep` (retention skips a
-- pinned build, see trigger.lua) and hands the changed document to the search index again.
-- A queued or running build cannot be pinned yet: the worker rewrites its whole document.
-- KEYS: build, consumers set, the index's finished list
-- ARGV: the `keep` object's JSON ('' to unpin), the index's consumer name
-- Returns the new document.
local raw = redis.call('GET', KEYS[1])
if not raw then return redis.error_reply('NOTFOUND build') end
local ok, doc = pcall(cjson.decode, raw)
if not ok or type(doc) ~= 'table' then
  return redis.error_reply('CONFLICT ' .. KEYS[1] .. ' is unreadable')
end
if doc.status == 'queued' or doc.status == 'running' then
  return redis.error_reply('CONFLICT ' .. KEYS[1] .. ' is ' .. doc.status
    .. ': a build can be pinned once it has ended')
end
if ARGV[1] == '' then
  if doc.keep == nil then return raw end
  doc.keep = nil
else
  doc.keep = cjson.decode(ARGV[1])
end
local new = cjson.encode(doc)
redis.call('SET', KEYS[1], new)
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then redis.call('LPUSH', KEYS[3], KEYS[1]) end
return new
