-- taskcast: a broadcast to everyone with an idempotency key, once.
--
-- KEYS[1]  the idempotency key ({prefix}:idem:{*}:<key>)
-- ARGV[1]  how long it is remembered, in seconds (IDEMPOTENCY_TTL_SECS)
-- ARGV[2]  the broadcast pub/sub channel ({prefix}:broadcast)
-- ARGV[3]  the message (see src/cluster/wire.rs)
-- Returns 0 when published, 1 when the key was seen within its TTL (then
-- nothing is published). Remembering the key and publishing are one step,
-- so a retry that reaches another instance at the same moment publishes nothing.

if redis.call('SET', KEYS[1], '- 0', 'NX', 'EX', ARGV[1]) then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 0
end
return 1
