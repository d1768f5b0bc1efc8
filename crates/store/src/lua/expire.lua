-- Cancels the builds whose queue timeout ran out before they first started: still queued
-- (in their queue, or waiting for a concurrency slot) on their first attempt. A build a
-- worker claimed, or one requeued after its worker vanished (it had started), is only
-- dropped from the deadlines. Idempotent: every api replica runs it.
-- KEYS: queue deadlines, consumers set, downstream consumer's list
-- ARGV: now (RFC 3339), batch limit, job prefix, queue prefix, queue marker prefix, job slots
--       prefix, job waiting prefix, finished prefix, events channel, after-build marks, group
--       slots prefix, group waiting prefix
-- Returns how many builds it cancelled and how many deadlines it went through.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
local cancelled = 0
for _, key in ipairs(due) do
  redis.call('ZREM', KEYS[1], key)
  local ok, doc = pcall(cjson.decode, redis.call('GET', key) or '')
  if ok and type(doc) == 'table' and doc.status == 'queued' and doc.attempt == 1 then
    local job_key = ARGV[3] .. doc.job
    local slots, waiting = slot_keys_of(doc, ARGV[6], ARGV[7], ARGV[11], ARGV[12])
    if redis.call('LREM', ARGV[4] .. doc.queue, 0, key) > 0
        or redis.call('LREM', waiting, 0, key) > 0 then
      local limit = ''
      local okd, def = pcall(cjson.decode, redis.call('GET', job_key) or '')
      if okd and type(def) == 'table' and type(def.queue_timeout_secs) == 'number' then
        limit = ' ' .. def.queue_timeout_secs .. ' s'
      end
      local why = 'not started within its job\'s queue timeout' .. limit .. ' (queue_timeout_secs)'
      if type(doc.reason) == 'string' then why = why .. '; it waited: ' .. doc.reason end
      doc.status = 'cancelled'
      doc.finished_at = ARGV[1]
      doc.reason = why
      redis.call('SET', key, cjson.encode(doc))
      free_slot(key, slots, waiting, ARGV[3], ARGV[4], ARGV[5])
      push_finished(KEYS[2], ARGV[8], key, job_key, KEYS[3], ARGV[10])
      redis.call('PUBLISH', ARGV[9], event('finished', doc, ARGV[1]))
      cancelled = cancelled + 1
    end
  end
end
return {cancelled, #due}
