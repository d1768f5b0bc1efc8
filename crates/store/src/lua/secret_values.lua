-- Reads the named secrets for a job: each from the nearest folder up from the job's that
-- sets it (`kiln:folder-secrets:<folder>`), else from the global hash, in one round trip.
-- KEYS: folder parents, global secrets
-- ARGV: the job's folder ('' the root), the folder secrets prefix, then the names
-- Returns, per name, {folder ('' for the global hash), stored value}, or {} when none sets it.
local names = #ARGV - 2
local out = {}
local folder, depth = ARGV[1], 0
while folder ~= '' and depth < 64 do
  local values = redis.call('HMGET', ARGV[2] .. folder, unpack(ARGV, 3))
  for i = 1, names do
    if not out[i] and values[i] then out[i] = {folder, values[i]} end
  end
  folder = redis.call('HGET', KEYS[1], folder) or ''
  depth = depth + 1
end
local values = redis.call('HMGET', KEYS[2], unpack(ARGV, 3))
for i = 1, names do
  if not out[i] then
    if values[i] then out[i] = {'', values[i]} else out[i] = {} end
  end
end
return out
