-- Apply a customer's events to their journey state, atomically with the dedupe check.
-- Mirrors models/journey.py:advance (the reference semantics); tests check both agree.
--
-- KEYS[1]  journey hash     <prefix>:{<customer>}:journey
-- KEYS[2]  dedupe zset      <prefix>:{<customer>}:seen   (member = event id, score = event time)
-- KEYS[3]  funnel hash      <prefix>:funnel              (stage -> customers currently there)
-- ARGV[1]  customer id, ARGV[2] dedupe window (ms), ARGV[3] path length
-- ARGV[4..] six per event: event id, event time (ms), touchpoint, stage, stage rank, channel ('' = none)
-- Returns one code per event: 1 applied, 0 duplicate, 2 too late (older than the dedupe window).
local journey, seen, funnel = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[2])
local path_length = tonumber(ARGV[3])

local cur = redis.call('HMGET', journey, 'stage', 'rank', 'since', 'first', 'last', 'events',
                       'channel', 'channel_ms', 'path')
local exists = cur[1] ~= false
local stage, rank, since, first, last, events = cur[1], tonumber(cur[2]), tonumber(cur[3]),
    tonumber(cur[4]), tonumber(cur[5]), tonumber(cur[6])
local channel, channel_ms, path_text = cur[7], tonumber(cur[8]), cur[9]
local old_stage = stage

local path = {}
if exists and path_text and path_text ~= '' then
  for ts, tp in string.gmatch(path_text, '(%d+):([^,]+)') do
    path[#path + 1] = {tonumber(ts), tp}
  end
end

local codes = {}
local applied = 0
for i = 4, #ARGV, 6 do
  local eid, ts, tp = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local ev_stage, ev_rank, ev_channel = ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  -- Too old first: its id may already be forgotten, so whether it was seen is unknowable.
  if exists and ts < last - window then
    codes[#codes + 1] = 2
  elseif exists and (tonumber(redis.call('ZSCORE', seen, eid)) or -1) >= last - window then
    -- (entries below the horizon are forgotten; they are pruned once, after the loop)
    codes[#codes + 1] = 0
  else
    if not exists then
      exists = true
      stage, rank, since, first, last, events = ev_stage, ev_rank, ts, ts, ts, 0
      channel, channel_ms = false, nil
    elseif ev_rank > rank then
      stage, rank, since = ev_stage, ev_rank, ts
    elseif ev_rank == rank and ts < since then
      since = ts
    end
    if ev_channel ~= '' and (channel_ms == nil or ts < channel_ms
        or (ts == channel_ms and ev_channel < (channel or ''))) then
      channel, channel_ms = ev_channel, ts
    end
    if ts < first then first = ts end
    if ts > last then last = ts end
    events = events + 1
    redis.call('ZADD', seen, ts, eid)
    redis.call('HINCRBY', journey, 'n:' .. tp, 1)
    local tl = tonumber(redis.call('HGET', journey, 't:' .. tp))
    if tl == nil or ts > tl then
      redis.call('HSET', journey, 't:' .. tp, ARGV[i + 1])
    end
    path[#path + 1] = {ts, tp}
    applied = applied + 1
    codes[#codes + 1] = 1
  end
end

if applied > 0 then
  table.sort(path, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local parts = {}
  for k = math.max(1, #path - path_length + 1), #path do
    parts[#parts + 1] = string.format('%d:%s', path[k][1], path[k][2])
  end
  redis.call('HSET', journey, 'cid', ARGV[1], 'stage', stage, 'rank', rank,
             'since', string.format('%d', since), 'first', string.format('%d', first),
             'last', string.format('%d', last), 'events', events, 'path', table.concat(parts, ','))
  if channel then
    redis.call('HSET', journey, 'channel', channel, 'channel_ms', string.format('%d', channel_ms))
  end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. string.format('%d', last - window))
  if old_stage ~= stage then
    if old_stage then redis.call('HINCRBY', funnel, old_stage, -1) end
    redis.call('HINCRBY', funnel, stage, 1)
  end
end
return codes
