-- Commit one batch's effect on one partition, atomically: storage mechanics only.
-- Every rule was applied in Python (models/partition.py); this script checks that the caller
-- still owns the partition and nobody committed since it read, then writes what it was given.
--
-- KEYS[1] meta hash     {<prefix>:p<N>}:meta       epoch, seq, offset, high, wm
-- KEYS[2] due zset      {<prefix>:p<N>}:due        customer -> next due time
-- KEYS[3] outbox list   {<prefix>:p<N>}:outbox     messages to publish
-- KEYS[4] agg hash      {<prefix>:p<N>}:agg        aggregate counters (integers)
-- KEYS[5] orders hash   {<prefix>:p<N>}:orders     customer -> order summary
-- KEYS[6] examples      {<prefix>:p<N>}:examples   settled propensity examples (stream)
-- KEYS[7] erased hash   {<prefix>:p<N>}:erased     pseudonym -> erasure time
-- KEYS[8 .. 7+g]        {<prefix>:p<N>}:gaps:<day> one per event-time day with gap counters
-- KEYS[8+g ..]          {<prefix>:p<N>}:c:<customer>, one per customer written or deleted
--
-- ARGV[1] epoch the caller claimed   ARGV[2] seq it read   ARGV[3] offset applied ('' = unchanged)
-- ARGV[4] high   ARGV[5] watermark   ARGV[6] g (gap keys)   ARGV[7] c (customer keys)
-- ARGV[8] gap key TTL (s), then, in order:
--   c values (one per customer key; '' = delete the key)
--   n, then n pairs (score, member)        due times to set
--   n, then n members                      due times to remove
--   n, then n messages                     appended to the outbox
--   n, then n pairs (field, increment)     aggregate counters
--   per gap key: n, then n pairs (field, increment)
--   n, then n pairs (field, value)         order summaries to set
--   n, then n fields                       order summaries to remove
--   n, then n values                       examples to append (one field 'e' each)
--   n, then n pairs (field, value)         erasure records
-- Returns {1, new seq}; {-1, epoch} when another worker claimed the partition since (fenced);
-- {-2, seq} when the partition was committed since the caller read it.
local meta = KEYS[1]
local epoch = redis.call('HGET', meta, 'epoch') or ''
if epoch ~= ARGV[1] then return {-1, epoch} end
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
if seq ~= tonumber(ARGV[2]) then return {-2, seq} end
seq = seq + 1
if ARGV[3] ~= '' then
  redis.call('HSET', meta, 'seq', seq, 'offset', ARGV[3], 'high', ARGV[4], 'wm', ARGV[5])
else
  redis.call('HSET', meta, 'seq', seq, 'high', ARGV[4], 'wm', ARGV[5])
end

local g, c, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local a = 9
local CHUNK = 500  -- keep every unpack well below Lua's stack limit

local function each_chunk(cmd, key, first, count, width)
  -- redis.call(cmd, key, ARGV[first .. first + count*width - 1]) in chunks
  local i, last = first, first + count * width - 1
  while i <= last do
    local j = math.min(last, i + CHUNK * width - 1)
    if key then
      redis.call(cmd, key, unpack(ARGV, i, j))
    else
      redis.call(cmd, unpack(ARGV, i, j))
    end
    i = j + 1
  end
end

-- customers: set or delete
local sets = {}
for k = 1, c do
  local key, value = KEYS[7 + g + k], ARGV[a + k - 1]
  if value == '' then redis.call('DEL', key) else sets[#sets + 1] = key; sets[#sets + 1] = value end
  if #sets >= 2 * CHUNK then redis.call('MSET', unpack(sets)); sets = {} end
end
if #sets > 0 then redis.call('MSET', unpack(sets)) end
a = a + c

local n = tonumber(ARGV[a]); a = a + 1
if n > 0 then each_chunk('ZADD', KEYS[2], a, n, 2) end
a = a + 2 * n
n = tonumber(ARGV[a]); a = a + 1
if n > 0 then each_chunk('ZREM', KEYS[2], a, n, 1) end
a = a + n
n = tonumber(ARGV[a]); a = a + 1
if n > 0 then each_chunk('RPUSH', KEYS[3], a, n, 1) end
a = a + n
n = tonumber(ARGV[a]); a = a + 1
for i = a, a + 2 * (n - 1), 2 do redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1]) end
a = a + 2 * n
for k = 1, g do
  n = tonumber(ARGV[a]); a = a + 1
  local key = KEYS[7 + k]
  for i = a, a + 2 * (n - 1), 2 do redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', key, ttl)
  a = a + 2 * n
end
n = tonumber(ARGV[a]); a = a + 1
if n > 0 then each_chunk('HSET', KEYS[5], a, n, 2) end
a = a + 2 * n
n = tonumber(ARGV[a]); a = a + 1
if n > 0 then each_chunk('HDEL', KEYS[5], a, n, 1) end
a = a + n
n = tonumber(ARGV[a]); a = a + 1
for i = a, a + n - 1 do redis.call('XADD', KEYS[6], '*', 'e', ARGV[i]) end
a = a + n
n = tonumber(ARGV[a]); a = a + 1
if n > 0 then each_chunk('HSET', KEYS[7], a, n, 2) end
return {1, seq}
