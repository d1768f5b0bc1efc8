-- Requeues, at the head of their queue, the builds whose lease expired (attempt + 1), or
-- ends them as `lost` past the job's lost_retries. Idempotent: every worker runs it.
-- A build that ends passes its job's concurrency slot on; a requeued one keeps it.
-- KEYS: leases, owners, consumers set, downstream consumer's list
-- ARGV: now (RFC 3339), job prefix, queue prefix, marker prefix, inflight prefix,
--       finished prefix, events channel, batch limit, running prefix, job slots prefix,
--       job waiting prefix, after-build marks, group slots prefix, group waiting prefix
local requeued, lost = 0, 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[8]))
for _, key in ipairs(expired) do
  local owner = redis.call('HGET', KEYS[2], key)
  local worker = owner and string.match(owner, '^(%S+)') or 'unknown'
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  if owner then
    redis.call('LREM', ARGV[5] .. worker, 0, key)
    local queue = string.match(owner, '(%S+)$')
    redis.call('LREM', ARGV[9] .. queue, 0, key)
  end
  local raw = redis.call('GET', key)
  if raw then
    local doc = cjson.decode(raw)
    if doc.status == 'queued' or doc.status == 'running' then
      local retries = 2
      local def = redis.call('GET', ARGV[2] .. doc.job)
      if def then
        local d = cjson.decode(def)
        if type(d.lost_retries) == 'number' then retries = d.lost_retries end
      end
      local kind
      if doc.cancel_requested == true then
        doc.status = 'cancelled'
        doc.reason = 'cancelled; its worker ' .. worker .. ' stopped renewing its lease'
        kind = 'finished'
      elseif doc.attempt > retries then
        doc.status = 'lost'
        doc.reason = 'worker ' .. worker .. ' stopped renewing its lease on attempt ' ..
          doc.attempt .. ' of ' .. (retries + 1)
        kind = 'finished'
      else
        doc.attempt = doc.attempt + 1
        doc.status = 'queued'
        doc.node = nil
        doc.started_at = nil
        doc.steps = nil
        doc.reason = 'requeued: worker ' .. worker .. ' stopped renewing its lease'
        kind = 'requeued'
      end
      if kind == 'finished' then
        doc.finished_at = ARGV[1]
        redis.call('SET', key, cjson.encode(doc))
        push_finished(KEYS[3], ARGV[6], key, ARGV[2] .. doc.job, KEYS[4], ARGV[12])
        local slots, waiting = slot_keys_of(doc, ARGV[10], ARGV[11], ARGV[13], ARGV[14])
        free_slot(key, slots, waiting, ARGV[2], ARGV[3], ARGV[4])
        lost = lost + 1
      else
        redis.call('SET', key, cjson.encode(doc))
        redis.call('RPUSH', ARGV[3] .. doc.queue, key)
        redis.call('ZADD', ARGV[4] .. doc.queue, 0, '0')
        requeued = requeued + 1
      end
      redis.call('PUBLISH', ARGV[7], event(kind, doc, ARGV[1]))
    end
  end
end
return {requeued, lost}
