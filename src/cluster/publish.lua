-- taskcast: publish one message to one channel, atomically.
--
-- KEYS[1]  the channel's meta hash   ({prefix}:meta:{channel}): epoch, offset
-- KEYS[2]  the channel's stream      ({prefix}:stream:{channel})
-- ARGV[1]  a fresh random epoch, used only if the meta hash does not exist
-- ARGV[2]  the message type
-- ARGV[3]  the payload (raw JSON text)
-- ARGV[4]  history size: the stream keeps exactly this many entries (MAXLEN)
-- ARGV[5]  stream TTL in seconds (HISTORY_TTL_SECS)
-- ARGV[6]  meta TTL in seconds (longer: the epoch and offset outlive the history)
-- ARGV[7]  the pub/sub channel ({prefix}:ch:{channel})
-- Returns {epoch, offset}.
--
-- Being one script is what makes "same order, same offsets everywhere" hold:
-- Redis runs it whole, so the offset it takes, the stream entry it writes and
-- the PUBLISH it sends happen in the same order for every publisher.

local meta, stream = KEYS[1], KEYS[2]

if redis.call('HSETNX', meta, 'epoch', ARGV[1]) == 1 then
  -- A new meta hash: the channel's first message, or its meta was flushed,
  -- evicted or expired. Offsets restart at 1 under a new epoch, so whatever
  -- is left in the stream belongs to the old epoch and must not be replayed
  -- (XADD would also refuse IDs below the old ones).
  redis.call('DEL', stream)
end
local epoch = redis.call('HGET', meta, 'epoch')
local offset = redis.call('HINCRBY', meta, 'offset', 1)

-- Exact MAXLEN (not ~): history holds exactly HISTORY_SIZE messages, as in
-- single-process mode, so whether a gap can be replayed does not depend on
-- where Redis happens to cut its radix-tree nodes.
redis.call('XADD', stream, 'MAXLEN', ARGV[4], string.format('%d-0', offset), 'k', ARGV[2], 'p', ARGV[3])
redis.call('EXPIRE', stream, ARGV[5])
redis.call('EXPIRE', meta, ARGV[6])

-- Pub/sub format: see src/cluster/wire.rs.
redis.call('PUBLISH', ARGV[7], string.format('%d %s %d ', offset, epoch, #ARGV[2]) .. ARGV[2] .. ARGV[3])

return {epoch, offset}
