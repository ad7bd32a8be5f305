-- taskcast: store one control record (a denial, revocation or disconnect)
-- and announce it to every instance, in one step.
--
-- KEYS[1]  the records hash ({prefix}:control:{*}): field -> record text
-- KEYS[2]  their expiry index ({prefix}:control-expiry:{*}): field -> unix seconds
-- ARGV[1]  the record's field ('r <user>', 'd <user> <pattern>', 'x <user>')
-- ARGV[2]  the record ('<kind> <cut-off> <expires> <user> ...', see src/control.rs)
-- ARGV[3]  its cut-off (unix seconds)
-- ARGV[4]  when it may be dropped (unix seconds)
-- ARGV[5]  now (unix seconds)
-- ARGV[6]  the control pub/sub channel ({prefix}:control)
-- ARGV[7]  the message for it ('<instance> <record>')
-- Returns 1.
--
-- Storing before publishing, in one script, is what lets an instance that
-- was cut off catch up: it SUBSCRIBEs first, then loads the hash
-- (control_load.lua), so every record is either in what it loads or
-- published after it listens.

local records, expiry = KEYS[1], KEYS[2]

-- Drop a bounded number of expired records on the way (a load drops the rest).
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', ARGV[5], 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('HDEL', records, unpack(gone))
  redis.call('ZREM', expiry, unpack(gone))
end

-- One record per field: the later cut-off wins (a revocation that arrives
-- late with an older issued_before must not shorten a newer one).
local keep = ARGV[2]
local old = redis.call('HGET', records, ARGV[1])
if old then
  local before = tonumber(string.match(old, '^%a (%d+) '))
  if before and before > tonumber(ARGV[3]) then
    keep = old
  end
end
redis.call('HSET', records, ARGV[1], keep)
local score = tonumber(redis.call('ZSCORE', expiry, ARGV[1]) or '0')
if tonumber(ARGV[4]) > score then
  redis.call('ZADD', expiry, ARGV[4], ARGV[1])
end

-- Both keys go when their last record may.
local last = redis.call('ZRANGE', expiry, -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', records, last[2])
redis.call('EXPIREAT', expiry, last[2])

redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
