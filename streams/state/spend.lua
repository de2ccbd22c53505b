-- Apply one record of the marketing-spend topic, atomically: storage mechanics only (the message
-- was validated in Python, models/spend.py).
--
-- KEYS[1] spend hash   <prefix>:spend   <channel>|<day number> -> '<cents> <partition> <offset>'
--                                       {offset}:<partition>   -> last offset handled
--
-- ARGV[1] partition   ARGV[2] offset   ARGV[3] field ('' = nothing to set: a dead-lettered record)
-- ARGV[4] cents
-- The amount is written only if no record at a later offset of the same partition set it: a
-- redelivered record changes nothing, and a zombie worker replaying old offsets after a rebalance
-- cannot undo a correction. (A field set from another partition, after the topic was given more
-- partitions, cannot be ordered against this one: the record being applied wins.)
-- Returns 1 when the amount was written, 0 otherwise.
local spend = KEYS[1]
local partition, offset = ARGV[1], tonumber(ARGV[2])
local mark = '{offset}:' .. partition
local handled = tonumber(redis.call('HGET', spend, mark) or '-1')
if offset > handled then
  redis.call('HSET', spend, mark, ARGV[2])
end
if ARGV[3] == '' then
  return 0
end
local current = redis.call('HGET', spend, ARGV[3])
if current then
  local _, p, o = string.match(current, '^(%S+) (%S+) (%S+)$')
  if p == partition and tonumber(o) >= offset then
    return 0
  end
end
redis.call('HSET', spend, ARGV[3], ARGV[4] .. ' ' .. partition .. ' ' .. ARGV[2])
return 1
