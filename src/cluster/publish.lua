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
-- KEYS[3]  optional: the publish's idempotency key ({prefix}:idem:{channel}:<key>)
-- ARGV[8]  with KEYS[3]: how long it is remembered, in seconds (IDEMPOTENCY_TTL_SECS)
-- Returns {epoch, offset, duplicate}: duplicate is 1 when KEYS[3] was seen
-- within its TTL; then nothing is stored or published, and epoch and offset
-- are the ones the first publish with that key got.
--
-- Being one script is what makes "same order, same offsets everywhere" hold:
-- Redis runs it whole, so the offset it takes, the stream entry it writes and
-- the PUBLISH it sends happen in the same order for every publisher.

local meta, stream, once = KEYS[1], KEYS[2], KEYS[3]

-- The check and the publish are one step: two instances given the same
-- retry at once run this one after the other, and the second sees the key.
if once then
  local seen = redis.call('GET', once)
  if seen then
    local e, o = string.match(seen, '^(%S+) (%d+)$')
    return {e, tonumber(o), 1}
  end
end

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

if once then
  redis.call('SET', once, epoch .. ' ' .. offset, 'EX', ARGV[8])
end

return {epoch, offset, 0}
