-- Apply a batch of customers' events to their journey state and deadlines, each customer
-- atomically with its dedupe check, and put every alert that opens or resolves into the
-- partition's outbox. One call per partition per batch: the configuration is parsed once.
-- Mirrors models/journey.py:advance, models/deadlines.py and models/value.py (the reference
-- semantics); a property test on the real Redis checks that both agree.
--
-- KEYS[1]  funnel hash    <prefix>:funnel                   stage -> customers currently there
-- KEYS[2]  deadlines zset <prefix>:deadlines:<partition>    member = <customer>, score = the earlier of their
--          stall and drop-off due times (each kept on the customer, fields sdue / ddue)
-- KEYS[3]  outbox list    <prefix>:outbox:<partition>       alert facts (JSON) waiting to be published
-- KEYS[4]  gap statistics <prefix>:gaps  (+ ':<event day>')  transition-time histograms, conversions
-- KEYS[5]  value totals   <prefix>:value                    attributed value, value lost with drop-offs
-- KEYS[6], KEYS[7], ... per customer: journey hash <prefix>:{<customer>}:journey and
--          dedupe zset <prefix>:{<customer>}:seen (member = the first 16 hex digits of the event id's
--          SHA-1, 64 bits: shorter than most ids, and a chance below 1e-13 that two of a customer's
--          ids inside one dedupe window collide; score = event time)
-- ARGV[1] dedupe window (ms)   ARGV[2] path length
-- ARGV[3] watermark now (ms): deadlines up to it fire after the events
-- ARGV[4] critical path "tp=stage,tp=stage,..."   ARGV[5] ms after each until the next one is due "x,y,0"
-- ARGV[6] stages by rank "s0,s1,..."   ARGV[7] max silence by rank (ms, 0 = none)   ARGV[8] severity by rank
-- ARGV[9] flow activities "x>y,y>z"   ARGV[10] how long gap statistics are kept (s)
-- ARGV[11] touchpoints "tp=stage=role,..." (role: order, refund or empty)
-- ARGV[12] attribution lookback (ms)   ARGV[13] time-decay half-life (ms)   ARGV[14] days of revenue kept
-- ARGV[15] scoring touchpoints "a,b"   ARGV[16] upsell touchpoints "u"
-- ARGV[17] touchpoints whose counts a scoring snapshot carries "a,b,c"
-- ARGV[18..] per customer: customer id, number of events n, then eight per event: event id,
--            event time (ms), touchpoint, stage, stage rank, channel ('' = none),
--            watermark when the event arrived (ms), value in cents (0 = none)
-- Returns per customer one code per event: 1 applied, 0 duplicate, 2 too late (older than the dedupe window).
-- An applied scoring event returns, instead of 1, its snapshot: {1, stage, since, first, last, events,
-- channel, orders, gross, refunded, last order ms (-1 = none), counts of ARGV[17]...}, the state as it was
-- right after that event, for the propensity features (streams/propensity_store.py).
local funnel, deadlines, outbox, gaps, value = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local window = tonumber(ARGV[1])
local path_length = tonumber(ARGV[2])
local now_wm = tonumber(ARGV[3])

local crit_tp, crit_stage, crit_index = {}, {}, {}
for tp, st in string.gmatch(ARGV[4], '([^,=]+)=([^,]+)') do
  crit_tp[#crit_tp + 1] = tp; crit_stage[#crit_tp] = st; crit_index[tp] = #crit_tp
end
local stall_after = {}
for ms in string.gmatch(ARGV[5], '[^,]+') do stall_after[#stall_after + 1] = tonumber(ms) end
local silence, severity, n = {}, {}, 0
local sil_list, sev_list = {}, {}
for ms in string.gmatch(ARGV[7], '[^,]+') do sil_list[#sil_list + 1] = tonumber(ms) end
for sev in string.gmatch(ARGV[8], '[^,]+') do sev_list[#sev_list + 1] = sev end
for s in string.gmatch(ARGV[6], '[^,]+') do
  n = n + 1; silence[s] = sil_list[n]; severity[s] = sev_list[n]
end
local function fmt(x) return string.format('%d', x) end
local preds, succs = {}, {}
for x, y in string.gmatch(ARGV[9], '([^,>]+)>([^,]+)') do
  preds[y] = preds[y] or {}; table.insert(preds[y], x)
  succs[x] = succs[x] or {}; table.insert(succs[x], y)
end
local gaps_ttl = tonumber(ARGV[10])
local tp_stage, tp_role = {}, {}
for tp, st, role in string.gmatch(ARGV[11], '([^,=]+)=([^,=]+)=([^,]*)') do
  tp_stage[tp] = st; if role ~= '' then tp_role[tp] = role end
end
local lookback, half_life, days_kept = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local scoring, upsell, snapshot_tps = {}, {}, {}
for tp in string.gmatch(ARGV[15], '[^,]+') do scoring[tp] = true end
for tp in string.gmatch(ARGV[16], '[^,]+') do upsell[tp] = true end
for tp in string.gmatch(ARGV[17], '[^,]+') do snapshot_tps[#snapshot_tps + 1] = tp end
local UPSELLS_KEPT = 10
local stage_by_rank, nstages = {}, 0
local rank_of = {}  -- a customer's rank is their stage's place in the current map (not stored)
for s in string.gmatch(ARGV[6], '[^,]+') do stage_by_rank[nstages] = s; rank_of[s] = nstages; nstages = nstages + 1 end

-- Gap statistics, per event-time day: r|tp customers reaching tp for the first time,
-- c|x>y of them having done x first, t|x>y|b transition times in log buckets (b = floor(4 log2 s)),
-- s|stage customers reaching a stage, d|stage drop-off alerts opened there.
-- Shared counters are summed here and written once at the end of the call, not per event.
local gap_acc, value_acc = {}, {}
local function count(ts, field)
  local key = gaps .. ':' .. fmt(math.floor(ts / 86400000))
  local acc = gap_acc[key]
  if not acc then acc = {}; gap_acc[key] = acc end
  acc[field] = (acc[field] or 0) + 1
end
local function add_value(field, amount)
  value_acc[field] = (value_acc[field] or 0) + amount
end
local function transition(x, y, tx, ty)
  local secs = math.max(1, (ty - tx) / 1000)
  count(ty, 'c|' .. x .. '>' .. y)
  count(ty, 't|' .. x .. '>' .. y .. '|' .. math.floor(4 * math.log(secs) / math.log(2)))
end


-- Event times in the path are base 36 (8 characters instead of 13; the path is the largest field).
local DIGITS36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function base36(n)
  local out = ''
  repeat
    local d = n % 36
    out = string.sub(DIGITS36, d + 1, d + 1) .. out
    n = (n - d) / 36
  until n == 0
  return out
end

-- An open alert as kept on the customer: a JSON array (about half the size of an object)
-- [touchpoint, anchor ms, expected ms, stage, severity, next touchpoint or ''].
local function encode_open(o)
  return cjson.encode({o.touchpoint, o.anchor_ms, o.expected_ms, o.stage, o.severity, o.next_touchpoint or ''})
end
local function decode_open(text)
  local a = cjson.decode(text)
  return {touchpoint = a[1], anchor_ms = a[2], expected_ms = a[3], stage = a[4], severity = a[5],
          next_touchpoint = a[6] ~= '' and a[6] or nil}
end

-- One customer: read their state, apply their events, decide deadlines and alerts, write back.
local function run_customer(journey, seen, cid, base, n_events)
  local cur = redis.call('HMGET', journey, 'stage', 'rank', 'since', 'first', 'last', 'events', 'channel',
                         'channel_ms', 'path', 'crit', 'crit_ms', 'stall_open', 'drop_open', 'orders', 'gross',
                         'refunded', 'fo_ms', 'fo_c', 'lo_ms', 'vdays', 'sdue', 'ddue')
  local exists = cur[1] ~= false
  -- (cur[2] is unused: the rank is derived from the stage; -1 for a stage no longer in the map)
  local stage, rank, since, first, last, events = cur[1], rank_of[cur[1]] or -1, tonumber(cur[3]),
      tonumber(cur[4]), tonumber(cur[5]), tonumber(cur[6])
  local channel, channel_ms, path_text = cur[7], tonumber(cur[8]), cur[9]
  local crit, crit_ms = tonumber(cur[10]), tonumber(cur[11]) or 0
  local stall_open = (cur[12] and cur[12] ~= '') and decode_open(cur[12]) or nil
  local drop_open = (cur[13] and cur[13] ~= '') and decode_open(cur[13]) or nil
  local orders, gross, refunded = tonumber(cur[14]) or 0, tonumber(cur[15]) or 0, tonumber(cur[16]) or 0
  local fo_ms, fo_c, lo_ms = tonumber(cur[17]), tonumber(cur[18]), tonumber(cur[19])
  local vdays = {}
  for d in string.gmatch(cur[20] or '', '[^,]+') do vdays[tonumber(d)] = true end
  local value_changed = false
  -- The due times are kept on the customer ('' = none); the partition's sorted set holds the earlier
  -- of the two, and is only written when that changes.
  local stall_due, drop_due = tonumber(cur[21]), tonumber(cur[22])
  local function next_due()
    if stall_due and drop_due then return math.min(stall_due, drop_due) end
    return stall_due or drop_due
  end
  local old_due = next_due()
  local old_stage = stage

  -- Per-touchpoint count and last time (hash fields n:<tp>, t:<tp>), read once, written back at the end.
  local tp_n, tp_t, tp_dirty = {}, {}, {}
  local function load_tp(x)
    if tp_n[x] == nil then
      local r = redis.call('HMGET', journey, 'n:' .. x, 't:' .. x)
      tp_n[x], tp_t[x] = tonumber(r[1]) or 0, tonumber(r[2]) or false
    end
  end

  local path = {}
  if exists and path_text and path_text ~= '' then
    for ts, tp, ch in string.gmatch(path_text, '(%w+):([^:,]+):([^,]*)') do path[#path + 1] = {tonumber(ts, 36), tp, ch} end
  end
  local function sort_path()
    table.sort(path, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      if a[2] ~= b[2] then return a[2] < b[2] end
      return a[3] < b[3]
    end)
  end

  -- models/value.py:attribute, on the path as it is after the order was applied
  local function attribute(purchase_ts, cents)
    local eligible = {}
    for _, t in ipairs(path) do
      if not tp_role[t[2]] and t[1] >= purchase_ts - lookback and t[1] < purchase_ts then eligible[#eligible + 1] = t end
    end
    local n = #eligible
    if n == 0 then
      add_value('unattributed', cents)
      return
    end
    local total_w, weights = 0, {}
    for k, t in ipairs(eligible) do
      weights[k] = 2 ^ (-(purchase_ts - t[1]) / half_life); total_w = total_w + weights[k]
    end
    local function add(model, t, share)
      add_value('tp|' .. model .. '|' .. t[2], share)
      add_value('ch|' .. model .. '|' .. (t[3] ~= '' and t[3] or '(none)'), share)
    end
    add('first_touch', eligible[1], cents)
    add('last_touch', eligible[n], cents)
    for k, t in ipairs(eligible) do
      add('linear', t, cents / n)
      add('time_decay', t, cents * weights[k] / total_w)
      add_value('stage|created|' .. tp_stage[t[2]], cents / n)
    end
  end

  local function emit(kind, status, alert, at)
    redis.call('RPUSH', outbox, cjson.encode({
      type = kind, status = status, customer_id = cid, stage = alert.stage, touchpoint = alert.touchpoint,
      anchor_ms = alert.anchor_ms, expected_ms = alert.expected_ms, at_ms = fmt(at),
      next_touchpoint = alert.next_touchpoint, severity = alert.severity}))
  end

  -- models/deadlines.py:fire_due
  local function fire_due(wm)
    if stall_due and not stall_open and stall_due <= wm then
      stall_open = {touchpoint = crit_tp[crit], anchor_ms = fmt(crit_ms), expected_ms = fmt(stall_after[crit]),
                    stage = crit_stage[crit], severity = severity[crit_stage[crit]] or 'medium',
                    next_touchpoint = crit_tp[crit + 1]}
      stall_due = nil
      emit('stalled_critical_path', 'open', stall_open, wm)
    end
    if drop_due and not drop_open and drop_due <= wm then
      drop_open = {touchpoint = path[#path][2], anchor_ms = fmt(last), expected_ms = fmt(silence[stage] or 0),
                   stage = stage, severity = severity[stage] or 'medium', next_touchpoint = ''}
      drop_due = nil
      emit('drop_off', 'open', drop_open, wm)
      count(wm, 'd|' .. stage)
      add_value('stage|lost_customers|' .. stage, 1)
      add_value('stage|lost_revenue|' .. stage, math.max(0, gross - refunded))
    end
  end

  -- models/deadlines.py:after_event
  local function after_event(tp, ts)
    local pos = crit_index[tp]
    if pos then
      if crit == nil or pos > crit then
        if stall_open and pos > crit_index[stall_open.touchpoint] then
          emit('stalled_critical_path', 'resolved', stall_open, ts)
          stall_open = nil
        end
        crit, crit_ms = pos, ts
      elseif pos == crit and ts > crit_ms then
        crit_ms = ts
      end
    end
    if drop_open and ts > tonumber(drop_open.anchor_ms) then
      emit('drop_off', 'resolved', drop_open, ts)
      drop_open = nil
    end
    stall_due = nil
    if not stall_open and crit and stall_after[crit] > 0 then stall_due = crit_ms + stall_after[crit] end
    drop_due = nil
    local sil = silence[stage] or 0
    if not drop_open and sil > 0 then drop_due = last + sil end
  end

  local codes = {}
  local applied = 0
  for i = base, base + 8 * (n_events - 1), 8 do
    local eid, ts, tp = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local ev_stage, ev_rank, ev_channel, arrival_wm = ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5],
        tonumber(ARGV[i + 6])
    -- Too old first: its id may already be forgotten, so whether it was seen is unknowable.
    if exists and ts < last - window then
      codes[#codes + 1] = 2
    elseif exists and (tonumber(redis.call('ZSCORE', seen, string.sub(redis.sha1hex(eid), 1, 16))) or -1) >= last - window then
      -- (ids below the horizon are forgotten; they are pruned once, after the loop)
      codes[#codes + 1] = 0
    else
      if exists then fire_due(arrival_wm) end  -- what was already due when this event arrived fires first
      if not exists then
        exists = true
        stage, rank, since, first, last, events = ev_stage, ev_rank, ts, ts, ts, 0
        channel, channel_ms = false, nil
        for r = 0, ev_rank do count(ts, 's|' .. stage_by_rank[r]) end
      elseif ev_rank > rank then
        for r = rank + 1, ev_rank do count(ts, 's|' .. stage_by_rank[r]) end
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
      redis.call('ZADD', seen, ts, string.sub(redis.sha1hex(eid), 1, 16))
      load_tp(tp)
      local tl = tp_t[tp]
      tp_n[tp] = tp_n[tp] + 1
      tp_dirty[tp] = true
      if tp_n[tp] == 1 then
        -- first time this touchpoint: it converts from the steps before it; a late first step
        -- converts to the steps already done after it
        count(ts, 'r|' .. tp)
        for _, x in ipairs(preds[tp] or {}) do
          load_tp(x)
          local tx = tp_t[x]
          if tx and tx <= ts then transition(x, tp, tx, ts) end
        end
        for _, y in ipairs(succs[tp] or {}) do
          load_tp(y)
          local ty = tp_t[y]
          if ty and ty >= ts and tp_n[y] == 1 then transition(tp, y, ts, ty) end
        end
      end
      if not tl or ts > tl then tp_t[tp] = ts end
      path[#path + 1] = {ts, tp, ev_channel}
      sort_path()
      while #path > path_length do table.remove(path, 1) end
      local role, cents = tp_role[tp], tonumber(ARGV[i + 7])
      if role then
        local day = math.floor(ts / 86400000)
        vdays[day] = true; value_changed = true
        if role == 'order' then
          redis.call('HINCRBY', journey, 'v:' .. fmt(day), fmt(cents))
          redis.call('HINCRBY', journey, 'o:' .. fmt(day), 1)
          orders, gross = orders + 1, gross + cents
          if fo_ms == nil or ts < fo_ms or (ts == fo_ms and cents < fo_c) then fo_ms, fo_c = ts, cents end
          if lo_ms == nil or ts > lo_ms then lo_ms = ts end
          attribute(ts, cents)
        else
          redis.call('HINCRBY', journey, 'v:' .. fmt(day), fmt(-cents))
          refunded = refunded + cents
        end
      end
      after_event(tp, ts)
      applied = applied + 1
      if upsell[tp] then
        -- the customer's upsell times (newest kept), from which prediction labels are decided
        local ups = {}
        for u in string.gmatch(redis.call('HGET', journey, 'ups') or '', '[^,]+') do ups[#ups + 1] = tonumber(u) end
        ups[#ups + 1] = ts
        table.sort(ups)
        while #ups > UPSELLS_KEPT do table.remove(ups, 1) end
        local parts = {}
        for k = 1, #ups do parts[k] = fmt(ups[k]) end
        redis.call('HSET', journey, 'ups', table.concat(parts, ','))
      end
      if scoring[tp] then
        local snap = {1, stage, since, first, last, events, channel or '', orders, gross, refunded, lo_ms or -1}
        for _, x in ipairs(snapshot_tps) do load_tp(x); snap[#snap + 1] = tp_n[x] end
        codes[#codes + 1] = snap
      else
        codes[#codes + 1] = 1
      end
    end
  end

  if exists then fire_due(now_wm) end

  -- Everything the customer's hash gets is written by one HSET.
  local out = {}
  local function put(k, v) out[#out + 1] = k; out[#out + 1] = v end
  if applied > 0 then
    local parts = {}
    for k = 1, #path do parts[#parts + 1] = base36(path[k][1]) .. ':' .. path[k][2] .. ':' .. path[k][3] end
    put('stage', stage); put('since', fmt(since)); put('first', fmt(first))
    put('last', fmt(last)); put('events', events); put('path', table.concat(parts, ','))
    if channel then put('channel', channel); put('channel_ms', fmt(channel_ms)) end
    if crit then put('crit', crit); put('crit_ms', fmt(crit_ms)) end
    for x in pairs(tp_dirty) do put('n:' .. x, tp_n[x]); put('t:' .. x, fmt(tp_t[x])) end
    if value_changed then
      local newest = nil
      for d in pairs(vdays) do if newest == nil or d > newest then newest = d end end
      local kept = {}
      for d in pairs(vdays) do
        if d > newest - days_kept then kept[#kept + 1] = fmt(d) else redis.call('HDEL', journey, 'v:' .. fmt(d), 'o:' .. fmt(d)) end
      end
      table.sort(kept)
      put('orders', orders); put('gross', fmt(gross)); put('refunded', fmt(refunded))
      put('vdays', table.concat(kept, ','))
      if fo_ms then put('fo_ms', fmt(fo_ms)); put('fo_c', fmt(fo_c)); put('lo_ms', fmt(lo_ms)) end
    end
    -- Ids below the dedupe horizon no longer count (see the check above); they are pruned now and
    -- then, not on every call: about one in eight calls per customer.
    if events % 8 < applied then redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. fmt(last - window)) end
    if old_stage ~= stage then
      if old_stage then redis.call('HINCRBY', funnel, old_stage, -1) end
      redis.call('HINCRBY', funnel, stage, 1)
    end
  end
  if not exists then  -- erased, or never there: nothing to wait for
    redis.call('ZREM', deadlines, cid)
  else
    -- open alerts and due times: written when set, deleted when cleared (an absent field costs nothing)
    local gone = {}
    for _, f in ipairs({{'stall_open', stall_open and encode_open(stall_open), cur[12]},
                        {'drop_open', drop_open and encode_open(drop_open), cur[13]},
                        {'sdue', stall_due and fmt(stall_due), cur[21]}, {'ddue', drop_due and fmt(drop_due), cur[22]}}) do
      if f[2] then put(f[1], f[2]) elseif f[3] then gone[#gone + 1] = f[1] end
    end
    if #out > 0 then redis.call('HSET', journey, unpack(out)) end
    if #gone > 0 then redis.call('HDEL', journey, unpack(gone)) end
    local due = next_due()
    if due ~= old_due then
      if due then redis.call('ZADD', deadlines, due, cid) else redis.call('ZREM', deadlines, cid) end
    end
  end
  return codes
end

local results, argi, ki = {}, 18, 6
while argi <= #ARGV do
  local n_events = tonumber(ARGV[argi + 1])
  results[#results + 1] = run_customer(KEYS[ki], KEYS[ki + 1], ARGV[argi], argi + 2, n_events)
  argi, ki = argi + 2 + 8 * n_events, ki + 2
end
for key, acc in pairs(gap_acc) do
  for field, n in pairs(acc) do redis.call('HINCRBY', key, field, n) end
  redis.call('EXPIRE', key, gaps_ttl)
end
for field, amount in pairs(value_acc) do redis.call('HINCRBYFLOAT', value, field, amount) end
return results
