-- Takes a build number, writes the build document, records it in job_<name>_recent,
-- trims to the retention (deleting the documents that fall out) and queues it: all or nothing.
-- Retention discards history, never a build someone waits for: trimming takes ended builds
-- from the oldest end and stops at one still queued or running, which holds back the
-- trimming of newer ones until it has ended (the next trigger after that catches up, at most
-- TRIM_MAX builds per trigger). Pinned builds (`keep`) are never trimmed.
-- A job with a `concurrency` limit whose slots are all taken gets the build in its waiting
-- list instead of the queue (`admit_waiting` moves it on when a slot frees); the slot set
-- and waiting list (KEYS 8, 9) are its concurrency group's when it names one.
-- A job with a `queue_timeout_secs` gets the build's deadline to start in the queue
-- deadlines (expire.lua cancels it then if it has not started).
-- KEYS: job, recent, counters, queue, marker, queues set, queue workers, slot set, waiting
--       list (the job's, or its concurrency group's), queue deadlines, storage orphans
-- ARGV: job name, document without its opening '{' and without number/storage_path/reason,
--       storage prefix, retention, queue name, build key prefix, the queued event's JSON
--       with number 0 (the number taken is put in here), liveness window ms, events channel, reason JSON
--       when no worker is live ('' none), expected definition (the caller checked that it
--       accepts builds), delivery key ('' none), delivery TTL seconds, concurrency limit
--       ('' none), reason JSON for a build that waits for a slot, queue timeout ms ('' none),
--       '1' to go ahead of the builds already queued or waiting ('' in turn), the oldest
--       `finished_at` (RFC 3339, UTC) a build may have to stay ('' no age limit)
-- Returns {n, document}, or {0, existing build key} when the delivery key shows this
-- event was handled already. The storage folders of trimmed builds are the workers' to
-- clear away (they reuse them).
-- Refuse before writing anything if a key holds the wrong type: Redis does not roll back
-- a script that fails half-way.
local limit = tonumber(ARGV[14])
local expected = {[2] = 'list', [3] = 'hash', [4] = 'list', [5] = 'zset', [6] = 'set',
  [7] = 'zset', [11] = 'list'}
if limit then expected[8], expected[9] = 'set', 'list' end
local queue_timeout = tonumber(ARGV[16])
if queue_timeout then expected[10] = 'zset' end
for i, t in pairs(expected) do
  local actual = redis.call('TYPE', KEYS[i]).ok
  if actual ~= 'none' and actual ~= t then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. actual .. ', not a ' .. t)
  end
end
local def = redis.call('GET', KEYS[1])
if not def then return redis.error_reply('NOTFOUND job') end
if def ~= ARGV[11] then return redis.error_reply('RETRY definition changed') end
if ARGV[12] ~= '' then
  local seen = redis.call('GET', ARGV[12])
  if seen then return {0, seen} end
end

local n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
local key = ARGV[6] .. n
local function document(reason)
  local r = ''
  if reason then r = '"reason":' .. reason .. ',' end
  return '{"number":' .. n .. ',"storage_path":"' .. ARGV[3] .. '/' .. n .. '",' .. r .. ARGV[2]
end
local no_worker = nil
if ARGV[10] ~= '' and redis.call('ZCOUNT', KEYS[7], now_ms() - tonumber(ARGV[8]), '+inf') == 0 then
  no_worker = ARGV[10]
end
local doc = document(no_worker)
redis.call('SET', key, doc)
if ARGV[12] ~= '' then redis.call('SET', ARGV[12], key, 'EX', tonumber(ARGV[13])) end
redis.call('LPUSH', KEYS[2], n)

local keep = tonumber(ARGV[4])
-- An ended build is in no queue, lease or running list (the scripts that end builds take it
-- out), so its document is all there is to delete. A document that is gone or unreadable
-- counts as ended. With an age limit, the oldest builds also go while they ended before the
-- cutoff (RFC 3339 UTC strings compare as the times they name, to the second). A pinned
-- build (`keep`) is stepped over and stays; pinned builds older than the newest `keep` ones
-- do not count against it. At most PINNED_MAX of them are stepped over per trigger. The
-- folder of a build removed from behind a pinned one goes on the storage orphans list:
-- workers clear away only the folders below the oldest build kept, which is the pinned one.
local TRIM_MAX, PINNED_MAX = 100, 1000
local cutoff = ARGV[18]
local len = redis.call('LLEN', KEYS[2])
local pinned = 0
local trimmed = 0
while trimmed < TRIM_MAX and pinned < PINNED_MAX do
  local over = len - pinned > keep
  if not over and cutoff == '' then break end
  local oldest = redis.call('LINDEX', KEYS[2], -1 - pinned)
  if not oldest then break end
  local old_key = ARGV[6] .. oldest
  local ok, d = pcall(cjson.decode, redis.call('GET', old_key) or '')
  local readable = ok and type(d) == 'table'
  if readable and (d.status == 'queued' or d.status == 'running') then break end
  if readable and type(d.keep) == 'table' then
    pinned = pinned + 1
  else
    local expired = readable and type(d.finished_at) == 'string' and d.finished_at < cutoff
    if not over and not expired and readable then break end
    redis.call('DEL', old_key)
    if pinned == 0 then
      redis.call('RPOP', KEYS[2])
    else
      redis.call('LREM', KEYS[2], -1, oldest)
      if readable and type(d.storage_path) == 'string' then
        redis.call('LPUSH', KEYS[11], d.storage_path)
      end
    end
    len = len - 1
    trimmed = trimmed + 1
  end
end

-- Builds already waiting go first (in a group they may wait for a lower limit than this
-- job's), unless this one is to go next. The claim end of a queue is its right.
local go_next = ARGV[17] == '1'
if limit and (redis.call('SCARD', KEYS[8]) >= limit
    or (not go_next and redis.call('LLEN', KEYS[9]) > 0)) then
  if go_next then redis.call('LPUSH', KEYS[9], key) else redis.call('RPUSH', KEYS[9], key) end
  -- Said in the reply, not stored: the api works out why a stored build waits when asked.
  doc = document(ARGV[15])
else
  if limit then redis.call('SADD', KEYS[8], key) end
  if go_next then redis.call('RPUSH', KEYS[4], key) else redis.call('LPUSH', KEYS[4], key) end
  redis.call('ZADD', KEYS[5], 0, '0')
end
redis.call('SADD', KEYS[6], ARGV[5])
if queue_timeout then redis.call('ZADD', KEYS[10], now_ms() + queue_timeout, key) end
-- Names hold no '"', so the event's only `"number":0` is its number.
local s, e = string.find(ARGV[7], '"number":0', 1, true)
if s then
  redis.call('PUBLISH', ARGV[9], string.sub(ARGV[7], 1, s - 1) .. '"number":' .. n .. string.sub(ARGV[7], e + 1))
end
return {n, doc}
