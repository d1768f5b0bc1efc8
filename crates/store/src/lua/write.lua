-- A worker's fenced write of a build document: refused unless the worker still holds the
-- build's lease token, so a worker that lost its lease cannot overwrite a newer run.
-- The start also carries the log's first batch of lines, published after the event, so a
-- build's first round trips are one.
-- KEYS: build, owners
-- ARGV: owner ("<worker> <token>"), document, events channel, event JSON ('' none),
--       output channel, lines message JSON ('' none)
if redis.call('HGET', KEYS[2], KEYS[1]) ~= ARGV[1] then return redis.error_reply('STALE lease') end
local old = redis.call('GET', KEYS[1])
if not old then return redis.error_reply('STALE build deleted') end
redis.call('SET', KEYS[1], keep_cancel_flag(old, ARGV[2]))
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return false
