-- Read what one batch of one partition needs, in one step: storage mechanics only.
--
-- KEYS[1] due zset    {<prefix>:p<N>}:due      KEYS[2] erased hash   {<prefix>:p<N>}:erased
-- KEYS[3 ..]          {<prefix>:p<N>}:c:<customer>, the customers the batch names
-- ARGV[1] watermark the batch will reach   ARGV[2] most due customers to return
-- ARGV[3 ..] the pseudonyms of the customers the batch names (for their erasure records)
-- Returns {due (member, score, member, score, ...), customer values (false = none), erasure times}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local values, erased = {}, {}
if #KEYS > 2 then values = redis.call('MGET', unpack(KEYS, 3)) end
if #ARGV > 2 then erased = redis.call('HMGET', KEYS[2], unpack(ARGV, 3)) end
return {due, values, erased}
