-- Takes the next build number (a matrix job: one per cell, in a row), writes the build
-- document, records it in job_<name>_recent, trims to the retention (`trim_recent`, in the
-- prelude: ended builds only, never pinned ones) and queues it: all or nothing.
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
--       `finished_at` (RFC 3339, UTC) a build may have to stay ('' no age limit), then
--       for a matrix job each cell's JSON object (none: one build)
-- Returns {first number, {document of each build}}, or {0, {existing build key}} when the
-- delivery key shows this event was handled already (the key names a matrix's first
-- build). The storage folders of trimmed builds are the workers' to clear away (they reuse
-- them), or the api's behind a pinned build.
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
  if seen then return {0, {seen}} end
end

-- A matrix job's cells (ARGV 19...) each get a build, numbered in a row, all or nothing.
local cells = #ARGV - 18
local count = math.max(cells, 1)
local first = redis.call('HINCRBY', KEYS[3], ARGV[1], count) - count + 1
local function document(i, reason)
  local n = first + i - 1
  local r, m = '', ''
  if reason then r = '"reason":' .. reason .. ',' end
  if cells > 0 then
    m = '"matrix":{"group":' .. first .. ',"index":' .. (i - 1) .. ',"size":' .. count
      .. ',"cell":' .. ARGV[18 + i] .. '},'
  end
  return '{"number":' .. n .. ',"storage_path":"' .. ARGV[3] .. '/' .. n .. '",' .. r .. m .. ARGV[2]
end
local no_worker = nil
if ARGV[10] ~= '' and redis.call('ZCOUNT', KEYS[7], now_ms() - tonumber(ARGV[8]), '+inf') == 0 then
  no_worker = ARGV[10]
end
local docs = {}
for i = 1, count do
  docs[i] = document(i, no_worker)
  redis.call('SET', ARGV[6] .. (first + i - 1), docs[i])
  redis.call('LPUSH', KEYS[2], first + i - 1)
end
if ARGV[12] ~= '' then redis.call('SET', ARGV[12], ARGV[6] .. first, 'EX', tonumber(ARGV[13])) end

trim_recent(KEYS[2], ARGV[6], tonumber(ARGV[4]), ARGV[18], KEYS[11], false)

-- Builds already waiting go first (in a group they may wait for a lower limit than this
-- job's), unless these are to go next. The claim end of a queue is its right.
local go_next = ARGV[17] == '1'
local queued, to_queue, to_wait = false, {}, {}
for i = 1, count do
  local key = ARGV[6] .. (first + i - 1)
  if limit and (redis.call('SCARD', KEYS[8]) >= limit
      or (not go_next and redis.call('LLEN', KEYS[9]) > 0)) then
    if go_next then to_wait[#to_wait + 1] = key else redis.call('RPUSH', KEYS[9], key) end
    -- Said in the reply, not stored: the api works out why a stored build waits when asked.
    docs[i] = document(i, ARGV[15])
  else
    if limit then redis.call('SADD', KEYS[8], key) end
    if go_next then to_queue[#to_queue + 1] = key else redis.call('LPUSH', KEYS[4], key) end
    queued = true
  end
  if queue_timeout then redis.call('ZADD', KEYS[10], now_ms() + queue_timeout, key) end
end
-- Going next, the last cell goes in first, so that the first is still claimed (or admitted)
-- first.
for i = #to_queue, 1, -1 do redis.call('RPUSH', KEYS[4], to_queue[i]) end
for i = #to_wait, 1, -1 do redis.call('LPUSH', KEYS[9], to_wait[i]) end
if queued then redis.call('ZADD', KEYS[5], 0, '0') end
redis.call('SADD', KEYS[6], ARGV[5])
-- Names hold no '"', so the event's only `"number":0` is its number.
local s, e = string.find(ARGV[7], '"number":0', 1, true)
if s then
  for i = 1, count do
    redis.call('PUBLISH', ARGV[9], string.sub(ARGV[7], 1, s - 1) .. '"number":' .. (first + i - 1) .. string.sub(ARGV[7], e + 1))
  end
end
return {first, docs}
