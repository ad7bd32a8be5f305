-- taskcast: a channel's position and the held messages after a given one,
-- for GET /api/channels/<channel> and GET /api/history.
--
-- KEYS[1]  the channel's meta hash   ({prefix}:meta:{channel}): epoch, offset
-- KEYS[2]  the channel's stream      ({prefix}:stream:{channel})
-- ARGV[1]  a fresh random epoch, used only if the meta hash does not exist
-- ARGV[2]  TTL in seconds for a meta hash created here: the history TTL, as
--          for a subscribe's read (a publish extends it)
-- ARGV[3]  the epoch the caller last saw, or '' for none
-- ARGV[4]  the offset the caller last saw (ignored unless ARGV[3] is the epoch)
-- ARGV[5]  the most entries to return (0: the position only)
-- Returns {epoch, offset, first, entries}: `first` is the oldest offset the
-- stream still holds (0: none), entries as XRANGE gives them, oldest first:
-- after ARGV[4] when ARGV[3] is the channel's epoch, else from the oldest held.
--
-- Like history.lua, a read fixes the epoch of a channel that has none yet:
-- a page that renders at (epoch, 0) and subscribes later with that
-- position receives the channel's first messages.

local meta, stream = KEYS[1], KEYS[2]

if redis.call('HSETNX', meta, 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', stream)
  redis.call('EXPIRE', meta, ARGV[2])
end
local epoch = redis.call('HGET', meta, 'epoch')
local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')

local first = 0
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if head[1] then
  first = tonumber(string.match(head[1][1], '^(%d+)'))
end

local limit = tonumber(ARGV[5])
if limit == 0 then
  return {epoch, offset, first, {}}
end
local start = '-'
if ARGV[3] == epoch then
  local since = tonumber(ARGV[4])
  if since >= offset then
    return {epoch, offset, first, {}}
  end
  start = string.format('%d-0', since + 1)
end
return {epoch, offset, first, redis.call('XRANGE', stream, start, '+', 'COUNT', limit)}
