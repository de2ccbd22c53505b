-- Store a batch's propensity predictions and settle the ones whose label is known, atomically.
-- One call per partition per batch (and per deadline check, with no predictions).
--
-- KEYS[1] predictions zset  <prefix>:predictions:<partition>  member = <customer>|<scored ms>, score = due ms
-- KEYS[2] examples stream   <prefix>:examples                 labelled examples for the learner
-- KEYS[3] outbox list       <prefix>:outbox:<partition>       alert facts (upsell_opportunity)
-- Per customer (built from ARGV[1], like the main script's keys): journey hash <prefix>:{<c>}:journey
-- (upsell times in field `ups`, latest score in p_score/p_at/p_ver, last upsell alert in up_alert)
-- and predictions hash <prefix>:{<c>}:pred (field = scored ms, value = the prediction as JSON).
--
-- ARGV[1] key prefix   ARGV[2] watermark (ms)   ARGV[3] horizon (ms)   ARGV[4] alert threshold
-- ARGV[5] most predictions settled by expiry in one call   ARGV[6] upsell touchpoint (for the alert)
-- ARGV[7] '1': settle a positive as soon as the upsell happens; '0': at the end of its horizon, like negatives
-- ARGV[8] fewest examples a model must have learned before its scores raise alerts (warm-up)
-- ARGV[9] number of predictions n, then eight per prediction: customer, scored ms, touchpoint, stage,
--         probability ('' = the model had no classes yet), predicted class (1, 0 or ''), model version,
--         features (JSON object)
-- ARGV[10 + 8n ..] customers to check for an upsell now (they did one in this batch)
--
-- A prediction is settled once. Its label is positive if the customer has an upsell in
-- [scored, scored + horizon), negative if the watermark reaches scored + horizon without one;
-- a positive is settled when the upsell happens (ARGV[7] = '1') or at the end of the horizon.
-- Settling removes it and appends {y, pred} to the examples stream, which the single learner reads.
-- Returns {predictions stored, settled positive, settled negative, alerts raised}.
local predictions, examples, outbox = KEYS[1], KEYS[2], KEYS[3]
local prefix, wm, horizon = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local threshold, expire_limit, upsell_tp = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local early, min_version = ARGV[7] == '1', tonumber(ARGV[8])
local stored, positive, negative, alerts = 0, 0, 0, 0
local EXAMPLES_MAX = 1000000  -- a safety cap should no learner run; the learner trims what it has learned

local function journey_key(cid) return prefix .. ':{' .. cid .. '}:journey' end
local function pred_key(cid) return prefix .. ':{' .. cid .. '}:pred' end
local function fmt(x) return string.format('%d', x) end

local function upsells(cid)
  local ups = {}
  for u in string.gmatch(redis.call('HGET', journey_key(cid), 'ups') or '', '[^,]+') do ups[#ups + 1] = tonumber(u) end
  return ups
end

local function took_upsell(ups, scored)
  for _, u in ipairs(ups) do
    if u >= scored and u < scored + horizon then return true end
  end
  return false
end

local function settle(cid, scored, y)
  local raw = redis.call('HGET', pred_key(cid), scored)
  redis.call('ZREM', predictions, cid .. '|' .. scored)
  if not raw then return end
  redis.call('HDEL', pred_key(cid), scored)
  redis.call('XADD', examples, 'MAXLEN', '~', EXAMPLES_MAX, '*', 'y', y and '1' or '0', 'pred', raw)
  if y then positive = positive + 1 else negative = negative + 1 end
end

-- 1. store the new predictions (a redelivered one is already there and is left alone)
local n = tonumber(ARGV[9])
local checked = {}
for i = 10, 10 + 8 * (n - 1), 8 do
  local cid, scored, tp, stage = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local p, c, v, x = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local jkey = journey_key(cid)
  if redis.call('HSETNX', pred_key(cid), scored, '{"p":' .. (p ~= '' and p or 'null') .. ',"c":'
      .. (c == '1' and 'true' or c == '0' and 'false' or 'null') .. ',"v":' .. v .. ',"x":' .. x .. '}') == 1 then
    stored = stored + 1
    redis.call('ZADD', predictions, tonumber(scored) + horizon, cid .. '|' .. scored)
    local last = tonumber(redis.call('HGET', jkey, 'p_at') or '-1')
    if tonumber(scored) >= last then redis.call('HSET', jkey, 'p_score', p, 'p_at', scored, 'p_ver', v) end
    local prev = tonumber(redis.call('HGET', jkey, 'up_alert') or '')
    if p ~= '' and tonumber(p) >= threshold and tonumber(v) >= min_version and (prev == nil or math.abs(tonumber(scored) - prev) >= horizon) then
      redis.call('HSET', jkey, 'up_alert', scored)
      redis.call('RPUSH', outbox, cjson.encode({
        type = 'upsell_opportunity', status = 'open', customer_id = cid, stage = stage, touchpoint = tp,
        anchor_ms = scored, expected_ms = fmt(horizon), at_ms = scored, next_touchpoint = upsell_tp,
        severity = 'medium', score = tonumber(p), model_version = tonumber(v)}))
      alerts = alerts + 1
    end
  end
  checked[cid] = true
end
for i = 10 + 8 * n, #ARGV do checked[ARGV[i]] = true end

-- 2. positives known now: the customers scored or upsold in this batch
if not early then checked = {} end
for cid in pairs(checked) do
  local fields = redis.call('HKEYS', pred_key(cid))
  if #fields > 0 then
    local ups = upsells(cid)
    for _, scored in ipairs(fields) do
      if took_upsell(ups, tonumber(scored)) then settle(cid, scored, true) end
    end
  end
end

-- 3. horizons the watermark has passed: positive if the upsell came in time after all, else negative
local due = redis.call('ZRANGEBYSCORE', predictions, '-inf', wm, 'LIMIT', 0, expire_limit)
for _, member in ipairs(due) do
  local cid, scored = string.match(member, '^(.*)|(%d+)$')
  settle(cid, scored, took_upsell(upsells(cid), tonumber(scored)))
end
return {stored, positive, negative, alerts}
