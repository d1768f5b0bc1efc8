-- Takes a build number, writes the build document, records it in job_<name>_recent,
-- trims to the retention (`trim_recent`, in the prelude: ended builds only, never pinned
-- ones) and queues it: all or nothing.
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
-- clear away (they reuse them), or the api's behind a pinned build.
-- Refuse before writing anything if a key holds the wrong type: Redis does not roll back
-- a script that fails half-way.
local limit = tonumber(ARGV[14])
local expected = {[2] = 'list', [3] = 'hash', [4] = 'list', [5] = 'zset', [6] = 'set',
  [7] = 'zset'}
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

trim_recent(KEYS[2], ARGV[6], tonumber(ARGV[4]), ARGV[18], KEYS[11], false)

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
