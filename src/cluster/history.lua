-- taskcast: a channel's position, and the messages after a given one.
--
-- KEYS[1]  the channel's meta hash   ({prefix}:meta:{channel}): epoch, offset
-- KEYS[2]  the channel's stream      ({prefix}:stream:{channel})
-- ARGV[1]  a fresh random epoch, used only if the meta hash does not exist
-- ARGV[2]  TTL in seconds for a meta hash created here: the history TTL, so
--          subscribes alone never leave long-lived keys (a publish extends it)
-- ARGV[3]  the epoch the subscriber last saw, or '' for none
-- ARGV[4]  the offset the subscriber last saw (ignored without ARGV[3])
-- ARGV[5]  the most entries to read (history size)
-- Returns {epoch, offset} or, when the gap can be read whole,
-- {epoch, offset, entries} with entries as XRANGE gives them:
-- {{'<offset>-0', {'k', type, 'p', payload}}, ...}.
--
-- One script, so the position and the entries are read at the same instant:
-- no publish (and no flush) can fall between the two.

local meta, stream = KEYS[1], KEYS[2]

-- The epoch is fixed on first sight, not on first publish: a subscriber that
-- joins a silent channel gets the epoch the channel's first message will have,
-- so it can recover that message later.
if redis.call('HSETNX', meta, 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', stream)
  redis.call('EXPIRE', meta, ARGV[2])
end
local epoch = redis.call('HGET', meta, 'epoch')
local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')

if ARGV[3] ~= epoch then
  return {epoch, offset}
end
local since = tonumber(ARGV[4])
if since > offset or offset - since > tonumber(ARGV[5]) then
  return {epoch, offset}
end
if since == offset then
  return {epoch, offset, {}}
end
local first = string.format('%d-0', since + 1)
return {epoch, offset, redis.call('XRANGE', stream, first, '+', 'COUNT', offset - since)}
