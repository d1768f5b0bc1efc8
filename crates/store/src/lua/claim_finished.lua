-- Moves up to N entries from a consumer's finished list into its processing list, oldest
-- first, atomically: an entry is always in one of the two until acknowledged.
-- KEYS: finished list, processing list
-- ARGV: how many
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not item then break end
  table.insert(out, item)
end
return out
