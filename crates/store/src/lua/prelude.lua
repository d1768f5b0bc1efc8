-- Shared helpers, prepended to every script that needs them.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Hands a finished build to every registered durable consumer (indexer, status reporter),
-- and to the api's after-build consumer when its job's definition holds one of `marks`
-- (one per line: it names downstream jobs or notification targets; see
-- `job::AFTER_BUILD_MARKS`).
local function push_finished(consumers_set, finished_prefix, key, job_key, downstream, marks)
  for _, c in ipairs(redis.call('SMEMBERS', consumers_set)) do
    redis.call('LPUSH', finished_prefix .. c, key)
  end
  local def = redis.call('GET', job_key)
  if not def then return end
  for mark in string.gmatch(marks, '[^\n]+') do
    if string.find(def, mark, 1, true) then
      redis.call('LPUSH', downstream, key)
      return
    end
  end
end

local function event(kind, doc, at)
  return cjson.encode({kind = kind, job = doc.job, number = doc.number,
    status = doc.status, folder = doc.folder, at = at})
end

-- The worker writes whole documents; a cancellation requested meanwhile must survive.
local function keep_cancel_flag(old, new)
  if old and string.find(old, '"cancel_requested":true', 1, true) then
    local s, e = string.find(new, '"cancel_requested":false', 1, true)
    if s then
      return string.sub(new, 1, s - 1) .. '"cancel_requested":true' .. string.sub(new, e + 1)
    end
  end
  return new
end

-- The job a build document belongs to. Documents are written by Kiln with `job` right after
-- `schema_version`, so a match at the start finds it without decoding the whole document
-- (names hold only letters, digits, '.', '-' and '_': nothing JSON escapes); anything else is
-- decoded.
local function job_of(doc)
  local job = string.match(doc, '^{"schema_version":%d+,"job":"([^"]+)"')
  if job then return job end
  local ok, d = pcall(cjson.decode, doc)
  if ok and type(d) == 'table' and type(d.job) == 'string' then return d.job end
  return ''
end

-- Moves the oldest queued build into the worker's in-flight list and leases it to the
-- worker under a fresh random token, in one step: no moment exists where a build is
-- neither queued nor leased. Returns {key, document, job definition (false when the job is
-- gone)}, or nil when the queue is empty. The definition comes along so the worker can
-- start the first step at once. Used by claim.lua, and by finish.lua for a worker that
-- takes its next build in the same round trip.
local function claim_next(queue, marker, inflight, leases, owners, running, owner, lease_ms, job_prefix)
  for _ = 1, 1000 do
    local key = redis.call('RPOP', queue)
    if not key then return nil end
    local doc = redis.call('GET', key)
    -- Entries whose document was deleted (job deleted, trimmed) are dropped.
    if doc then
      redis.call('LPUSH', inflight, key)
      redis.call('ZADD', leases, now_ms() + tonumber(lease_ms), key)
      redis.call('HSET', owners, key, owner)
      redis.call('LPUSH', running, key)
      -- Another idle worker may take the next one.
      if redis.call('LLEN', queue) > 0 then redis.call('ZADD', marker, 0, '0') end
      return {key, doc, redis.call('GET', job_prefix .. job_of(doc))}
    end
  end
  return nil
end

-- A job definition's `concurrency` limit, nil when it has none (or is gone).
local function concurrency_of(def)
  if not def then return nil end
  local ok, d = pcall(cjson.decode, def)
  if ok and type(d) == 'table' and type(d.concurrency) == 'number' then return d.concurrency end
  return nil
end

-- The slot set and waiting list of a decoded build document: its concurrency group's when
-- it names one (`keys::slot_keys`), else its job's.
local function slot_keys_of(doc, job_slots, job_waiting, group_slots, group_waiting)
  if type(doc.concurrency_group) == 'string' then
    return group_slots .. doc.concurrency_group, group_waiting .. doc.concurrency_group
  end
  return job_slots .. doc.job, job_waiting .. doc.job
end

-- Moves waiting builds (oldest first) to the claim end of their queue while the slot set
-- has room for them: each waits for its own job's limit (a job without one any more takes
-- no slot). A waiting build has waited its turn already, so it is the next one claimed
-- rather than the last. Entries whose build is gone or no longer queued (cancelled) are
-- dropped.
local function admit_waiting(slots, waiting, job_prefix, queue_prefix, marker_prefix)
  while true do
    local key = redis.call('LINDEX', waiting, 0)
    if not key then break end
    local ok, d = pcall(cjson.decode, redis.call('GET', key) or '')
    if ok and type(d) == 'table' and d.status == 'queued' and type(d.queue) == 'string' then
      local limit = concurrency_of(redis.call('GET', job_prefix .. d.job))
      if limit and redis.call('SCARD', slots) >= limit then break end
      if limit then redis.call('SADD', slots, key) end
      redis.call('RPUSH', queue_prefix .. d.queue, key)
      redis.call('ZADD', marker_prefix .. d.queue, 0, '0')
    end
    redis.call('LPOP', waiting)
  end
end

-- A build left its slot (it ended): the next waiting ones may take it.
local function free_slot(key, slots, waiting, job_prefix, queue_prefix, marker_prefix)
  if redis.call('SREM', slots, key) == 1 then
    admit_waiting(slots, waiting, job_prefix, queue_prefix, marker_prefix)
  end
end

-- Trims a job's recent list to its retention: ended builds go from the oldest end while the
-- list holds more than `keep`, or, with an age limit, while they ended before `cutoff` (RFC
-- 3339 UTC strings compare as the times they name, to the second; '' none). An ended build
-- is in no queue, lease or running list (the scripts that end builds take it out), so its
-- document is all there is to delete; one that is gone or unreadable counts as ended.
-- Retention discards history, never a build someone waits for: trimming stops at a build
-- still queued or running, which holds back the trimming of newer ones until it has ended
-- (at most TRIM_MAX builds go per call). A pinned build (`keep`) is stepped over and stays;
-- pinned builds older than the newest `keep` ones do not count against it, and at most
-- PINNED_MAX of them are stepped over per call. Workers clear away the folders below a
-- job's oldest kept build (the pinned one, while pinned), so the storage path of a build
-- removed from behind a pinned one goes onto `orphans` for the api to remove, as does every
-- removed build's with `orphan_all` (a sweep of a job no worker may build again).
-- Returns how many builds went.
local function trim_recent(recent, build_prefix, keep, cutoff, orphans, orphan_all)
  local TRIM_MAX, PINNED_MAX = 100, 1000
  local len = redis.call('LLEN', recent)
  local pinned, trimmed = 0, 0
  while trimmed < TRIM_MAX and pinned < PINNED_MAX do
    local over = len - pinned > keep
    if not over and cutoff == '' then break end
    local oldest = redis.call('LINDEX', recent, -1 - pinned)
    if not oldest then break end
    local old_key = build_prefix .. oldest
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
        redis.call('RPOP', recent)
      else
        redis.call('LREM', recent, -1, oldest)
      end
      -- pcall: the orphans list's type is not checked up front (a command on every
      -- trigger for a push that is rare); a list broken by hand leaves a folder behind
      -- rather than half a trigger.
      if (pinned > 0 or orphan_all) and readable and type(d.storage_path) == 'string' then
        redis.pcall('LPUSH', orphans, d.storage_path)
      end
      len = len - 1
      trimmed = trimmed + 1
    end
  end
  return trimmed
end
