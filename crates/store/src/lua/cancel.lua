-- Cancels a build: a queued one leaves its queue and ends `cancelled` at once; a running
-- one is flagged and its worker told over pub/sub (the flag, seen at the next renew, is
-- the guarantee). A queued build may also be waiting for one of its job's concurrency
-- slots; one that held a slot passes it on.
-- KEYS: build, queue, consumers set, slot set, waiting list (the job's, or its concurrency
--       group's), job, downstream consumer's list
-- ARGV: now, finished prefix, events channel, cancel channel, reason, queue prefix,
--       queue marker prefix, after-build marks, job prefix
local raw = redis.call('GET', KEYS[1])
if not raw then return 'missing' end
local doc = cjson.decode(raw)
if doc.status ~= 'queued' and doc.status ~= 'running' then return 'final' end
if doc.status == 'queued' and (redis.call('LREM', KEYS[2], 0, KEYS[1]) > 0
    or redis.call('LREM', KEYS[5], 0, KEYS[1]) > 0) then
  doc.status = 'cancelled'
  doc.finished_at = ARGV[1]
  doc.reason = ARGV[5]
  redis.call('SET', KEYS[1], cjson.encode(doc))
  free_slot(KEYS[1], KEYS[4], KEYS[5], ARGV[9], ARGV[6], ARGV[7])
  push_finished(KEYS[3], ARGV[2], KEYS[1], KEYS[6], KEYS[7], ARGV[8])
  redis.call('PUBLISH', ARGV[3], event('finished', doc, ARGV[1]))
  return 'cancelled'
end
-- Running, or claimed by a worker that has not written `running` yet.
if doc.cancel_requested == true then return 'requested' end
doc.cancel_requested = true
redis.call('SET', KEYS[1], cjson.encode(doc))
redis.call('PUBLISH', ARGV[4], KEYS[1])
redis.call('PUBLISH', ARGV[3], event('cancel_requested', doc, ARGV[1]))
return 'requested'
