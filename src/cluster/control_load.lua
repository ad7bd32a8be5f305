-- taskcast: every control record in force (at start-up, and after every
-- reconnect to Redis).
--
-- KEYS[1]  the records hash ({prefix}:control:{*})
-- KEYS[2]  their expiry index ({prefix}:control-expiry:{*})
-- ARGV[1]  now (unix seconds)
-- Returns the record texts (see src/control.rs), expired ones dropped first.

local records, expiry = KEYS[1], KEYS[2]
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', ARGV[1])
-- unpack() is bounded by Lua's C stack: delete in chunks.
for i = 1, #gone, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #gone) do
    chunk[#chunk + 1] = gone[j]
  end
  redis.call('HDEL', records, unpack(chunk))
end
redis.call('ZREMRANGEBYSCORE', expiry, '-inf', ARGV[1])
return redis.call('HVALS', records)
