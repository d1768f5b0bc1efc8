-- Changes one field of an ended build's document and hands the document to the search index
-- again: pins or unpins the build (`keep`; retention skips a pinned build, see
-- `trim_recent`), records a downstream build its end queued (`downstream_builds`). A
-- queued or running build is refused: its worker rewrites the whole document.
-- KEYS: build, consumers set, the index's finished list
-- ARGV: field, 'set' | 'unset' | 'add_build' (append a {job, number} not listed yet), the
--       value's JSON ('' for unset), the index's consumer name
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
local field, op = ARGV[1], ARGV[2]
if op == 'unset' then
  if doc[field] == nil then return raw end
  doc[field] = nil
elseif op == 'set' then
  doc[field] = cjson.decode(ARGV[3])
else
  local new = cjson.decode(ARGV[3])
  local list = doc[field]
  if type(list) ~= 'table' then list = {} end
  for _, b in ipairs(list) do
    if type(b) == 'table' and b.job == new.job and b.number == new.number then return raw end
  end
  list[#list + 1] = new
  doc[field] = list
end
local changed = cjson.encode(doc)
redis.call('SET', KEYS[1], changed)
if redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 1 then redis.call('LPUSH', KEYS[3], KEYS[1]) end
return changed
