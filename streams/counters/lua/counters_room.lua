-- counters_room.lua: apply one room's events (engagement or order side) to its counters, idempotently.
--
-- KEYS[1]  the room's counter hash (fs:{r:<room>}:cnt); every other counter key is derived from it
-- KEYS[2]  the room's sale set (fs:{r:<room>}:sales)
-- ARGV[1]  stream code: e (engagement topic) | o (orders topic)
-- ARGV[2]  lateness ms       ARGV[3] dedupe horizon ms   ARGV[4] stale-viewer ms
-- ARGV[5]  seconds of per-second buckets kept            ARGV[6] minute-window TTL s
-- ARGV[7]  dedupe-set TTL s (the idle TTL: buckets are deleted by event time)
-- ARGV[8]  idle TTL of the room's keys s   ARGV[9] referrers kept
-- ARGV[10] spike state field ('' = none)  ARGV[11] spike window s  ARGV[12] max seconds of counts returned
-- ARGV[13] minutes in the funnel window   ARGV[14] the channels, space-separated
-- ARGV[15] the events, in partition order, as a JSON array of arrays:
--   [partition, position (record offset * 10000 + index in the record), event id digest (signed 64-bit,
--    as a decimal string), ts, kind, user, channel, sku, n, referrer]
--   kinds: J joined, L left, K liked (n likes), C commented, S shared, P product click, A cart add (n units),
--          R cart remove, O order placed, Y order paid (n = amount), U order refunded (n = the amount the
--          stock core refunded: paid orders, GMV, the funnel's paid and GMV and the referrer's GMV go down
--          by it, net of refunds), N sale opened (sku = sale id)
--
-- Exactly-once effects under at-least-once delivery (admit() in counters_lib.lua):
--   * per-(stream, partition) sets of event id digests (10 s event-time buckets, deleted by event time)
--     drop replays (redelivered records) and producer duplicates alike;
--   * a per-(stream, partition) position watermark tells the two apart, never skips on its own: a new
--     id behind it (a recreated topic restarting its offsets) is counted and resets it;
--   * events older than the dedupe horizon (vs. their partition's newest time), or whose dedupe set
--     is gone, are dropped as too old: their id cannot be checked.
-- Events older than the lateness bound count in totals but not in windows (series, minute buckets).
--
-- Returns {applied, dups, late, too_old, replayed, stream newest ms, spike state or '', lo second, {counts}}
-- (counters_lib.lua is prepended: part_state, dd_add, part_finish, add_buckets, trim_buckets, spike_input)

local B = KEYS[1]
local st = ARGV[1]
local LATE, DD, STALE = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local KEEP, WTTL, DTTL = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local RTTL, REFKEEP = tonumber(ARGV[8]), tonumber(ARGV[9])
local SPF, SPW, SPMAX = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
local WMIN = tonumber(ARGV[13])
local CHANS = {}
for c in string.gmatch(ARGV[14], '%S+') do CHANS[#CHANS + 1] = c end
CHANS[#CHANS + 1] = '*'
local ON, SEC, F, SKUS = B .. ':on', B .. ':sec', B .. ':f', B .. ':skus'
local OFF = B .. ':off'
local REFO, REFG = B .. ':ref:o', B .. ':ref:g'

local NF = 'n' .. st
local cur = redis.call('HMGET', B, NF, 'nall', 'sl', 'peak', 'vts', 'wl')
local newest = tonumber(cur[1]) or 0
local nall = tonumber(cur[2]) or 0
local sl = tonumber(cur[3])
local peak = tonumber(cur[4]) or 0
local peak0 = peak
local vts = tonumber(cur[5]) or 0

local parts = {map = {}, list = {}}

local online = 0
if st == 'e' then online = redis.call('ZCARD', ON) end

local applied, dups, late, old, replay = 0, 0, 0, 0, 0
local tot = {}
local secs = {}
local vsec = {}
local hll_all, hll_min = {}, {}
local fun, funw = {}, {}
local refo, refg = {}, {}
local skus, sales = {}, {}

local function inc(t, k, n) t[k] = (t[k] or 0) + n end
local function hadd(t, key, m)
  local s = t[key]
  if s == nil then s = {}; t[key] = s end
  s[m] = true
end
local function bucket(sec, width)
  local b = secs[sec]
  if b == nil then
    b = {}
    for j = 1, width do b[j] = 0 end
    secs[sec] = b
  end
  return b
end
local function tget(t, k)
  local v = t[k]
  if v == nil then v = {}; t[k] = v end
  return v
end
-- Key names are cached per (stage, channel, SKU[, minute]): building strings per event is the
-- script's main cost. Whole stream: viewers by (ch, *) and (*, *); SKU stages by (ch, sku) only,
-- the reader unions them (PFCOUNT of several keys) for a channel, a SKU or the room. Minute
-- windows: (ch, *), (*, *) and (*, sku): a channel's window or a SKU's, not a channel's SKU.
-- Every distinct key costs a PFADD per call, so the channel x SKU product is written once, not
-- seven times.
local combo_cache, whole_cache, minute_cache = {}, {}, {}
local function combos(ch, sku)
  local c = tget(combo_cache, ch)
  local v = c[sku]
  if v == nil then
    if sku == '*' then v = {ch .. ':*', '*:*'}
    else v = {ch .. ':' .. sku, ch .. ':*', '*:' .. sku, '*:*'} end
    c[sku] = v
  end
  return v
end
local function whole_keys(code, ch, sku)
  local c = tget(tget(whole_cache, code), ch)
  local v = c[sku]
  if v == nil then
    if sku == '*' then v = {B .. ':u:' .. code .. ':' .. ch .. ':*', B .. ':u:' .. code .. ':*:*'}
    else v = {B .. ':u:' .. code .. ':' .. ch .. ':' .. sku} end
    c[sku] = v
  end
  return v
end
local function minute_keys(code, ch, sku, minute)
  local c = tget(tget(tget(minute_cache, minute), code), ch)
  local v = c[sku]
  if v == nil then
    local pre = B .. ':uw:' .. minute .. ':' .. code .. ':'
    if sku == '*' then v = {pre .. ch .. ':*', pre .. '*:*'}
    else v = {pre .. ch .. ':*', pre .. '*:*', pre .. '*:' .. sku} end
    c[sku] = v
  end
  return v
end
-- distinct users of a stage: whole stream always, the event's minute unless the event is late
local function stage(code, ch, sku, user, minute, in_window)
  for _, k in ipairs(whole_keys(code, ch, sku)) do hadd(hll_all, k, user) end
  if in_window then
    for _, k in ipairs(minute_keys(code, ch, sku, minute)) do hadd(hll_min, k, user) end
  end
end
local function money(code, ch, sku, n, minute, in_window)
  local cb = combos(ch, sku)
  for j = 1, 4 do inc(fun, code .. ':' .. cb[j], n) end
  if in_window then
    local w = tget(funw, minute)
    inc(w, code .. ':' .. cb[2], n)
    inc(w, code .. ':' .. cb[#cb], n)
    if sku ~= '*' then inc(w, code .. ':' .. cb[3], n) end
  end
end

local events = cjson.decode(ARGV[15])
for i = 1, #events do
  local e = events[i]
  local ps = part_state(B, st, parts, e[1])
  local v = admit(B, ps, e[2], e[3], e[4], DD)
  if v == REPLAY then
    replay = replay + 1
  elseif v == OLD then
    old = old + 1
  elseif v == DUP then
    dups = dups + 1
  else
    do
      local ts = e[4]
      local pn = ps.nw
      local minute = floor(ts / 60000)
      applied = applied + 1
      if ts > pn then ps.nw = ts end
      local in_window = ts >= pn - LATE
      if not in_window then late = late + 1 end
      if ts > newest then newest = ts end
      local kind, user, ch, sku, n = e[5], e[6], e[7], e[8], e[9]
      local sec = floor(ts / 1000)
      if st == 'e' then
        -- presence honours each viewer's latest event by event time: any event refreshes the
        -- viewer, a leave removes one not seen since and is remembered (OFF: user -> latest leave),
        -- so an event stamped at or before that leave arriving late does not bring the viewer back
        if kind == 'L' then
          inc(tot, 'leaves', 1)
          redis.call('ZADD', OFF, 'GT', ts, user)
          local s = redis.call('ZSCORE', ON, user)
          if s and tonumber(s) <= ts then
            redis.call('ZREM', ON, user)
            online = online - 1
          end
        elseif ts >= newest - STALE then
          local gone = redis.call('ZSCORE', OFF, user)
          if not gone or tonumber(gone) < ts then
            online = online + redis.call('ZADD', ON, 'GT', ts, user)
          end
        end
        local nsec = floor(newest / 1000)
        if nsec > vts then
          vts = nsec
          online = online - redis.call('ZREMRANGEBYSCORE', ON, '-inf', '(' .. (newest - STALE))
          -- a leave older than the stale window shadows only events the stale check refuses anyway
          redis.call('ZREMRANGEBYSCORE', OFF, '-inf', '(' .. (newest - STALE))
        end
        if online > peak then peak = online end
        vsec[nsec] = online
        inc(tot, 'events', 1)
        local b = nil
        if in_window then b = bucket(sec, 6); b[1] = b[1] + 1 end
        stage('v', ch, '*', user, minute, in_window)
        if kind == 'K' then inc(tot, 'likes', n); if b then b[2] = b[2] + n end
        elseif kind == 'J' then inc(tot, 'joins', 1)
        elseif kind == 'C' then inc(tot, 'comments', 1); if b then b[3] = b[3] + 1 end
        elseif kind == 'S' then inc(tot, 'shares', 1); if b then b[4] = b[4] + 1 end
        elseif kind == 'A' then
          inc(tot, 'adds', 1); inc(tot, 'add_units', n)
          if b then b[5] = b[5] + 1 end
          stage('a', ch, sku, user, minute, in_window)
          skus[sku] = true
        elseif kind == 'P' then
          inc(tot, 'clicks', 1)
          if b then b[6] = b[6] + 1 end
          stage('k', ch, sku, user, minute, in_window)
          skus[sku] = true
        elseif kind == 'R' then inc(tot, 'removes', 1)
        end
      else
        local ref = e[10]
        if kind == 'O' then
          inc(tot, 'orders', 1)
          if in_window then local b = bucket(sec, 3); b[1] = b[1] + 1 end
          stage('o', ch, sku, user, minute, in_window)
          money('o', ch, sku, 1, minute, in_window)
          if ref ~= '' then inc(refo, ref, 1) end
          skus[sku] = true
        elseif kind == 'Y' then
          inc(tot, 'paid', 1); inc(tot, 'gmv', n)
          if in_window then local b = bucket(sec, 3); b[2] = b[2] + 1; b[3] = b[3] + n end
          stage('p', ch, sku, user, minute, in_window)
          money('p', ch, sku, 1, minute, in_window)
          money('g', ch, sku, n, minute, in_window)
          if ref ~= '' then inc(refg, ref, n) end
          skus[sku] = true
        elseif kind == 'U' then
          inc(tot, 'paid', -1); inc(tot, 'gmv', -n)
          inc(tot, 'refunds', 1); inc(tot, 'refunded_gmv', n)
          money('p', ch, sku, -1, minute, in_window)
          money('g', ch, sku, -n, minute, in_window)
          if ref ~= '' then inc(refg, ref, -n) end
        elseif kind == 'N' then
          sales[sku] = true
        end
      end
    end
  end
end

-- totals and state
if dups > 0 then inc(tot, 'dups', dups) end
if resets > 0 then inc(tot, 'resets', resets) end
if late > 0 then inc(tot, 'late', late) end
if old > 0 then inc(tot, 'too_old', old) end
for k, n in pairs(tot) do redis.call('HINCRBY', B, k, n) end
if newest > nall then nall = newest end
local state = {NF, newest, 'nall', nall, 'vts', vts, 'stale', STALE}
-- minute windows behind the funnel window and the lateness bound are never read or written
-- again: delete them by event time (their TTL only covers rooms that stop)
local closed = floor((nall - LATE) / 60000) - WMIN
local wl = tonumber(cur[6]) or closed
if closed > wl then
  if closed - wl > 30 then wl = closed - 30 end
  local known = redis.call('SMEMBERS', SKUS)
  for m = wl, closed - 1 do
    local dels = {B .. ':fw:' .. m}
    for _, code in ipairs({'v', 'k', 'a', 'o', 'p'}) do
      for _, ch in ipairs(CHANS) do dels[#dels + 1] = B .. ':uw:' .. m .. ':' .. code .. ':' .. ch .. ':*' end
    end
    redis.call('DEL', unpack(dels))
    for j = 1, #known, 500 do
      local sk = {}
      for x = j, math.min(j + 499, #known) do
        for _, code in ipairs({'k', 'a', 'o', 'p'}) do sk[#sk + 1] = B .. ':uw:' .. m .. ':' .. code .. ':*:' .. known[x] end
      end
      redis.call('DEL', unpack(sk))
    end
  end
  wl = closed
end
state[#state + 1] = 'wl'; state[#state + 1] = wl
if peak > peak0 then state[#state + 1] = 'peak'; state[#state + 1] = peak end
-- per-second buckets (only seconds still kept), packed "a b c ..." per (second, stream)
local cutoff = floor(nall / 1000) - KEEP
add_buckets(SEC, secs, st, cutoff)
for sec, v in pairs(vsec) do
  if sec >= cutoff then redis.call('HSET', SEC, sec .. 'v', v) end
end
sl = trim_buckets(SEC, sl, cutoff, KEEP, {'e', 'o', 'v'})
state[#state + 1] = 'sl'; state[#state + 1] = sl
for _, p in ipairs(parts.list) do part_finish(B, parts.map[p], DD, DTTL, state) end
redis.call('HSET', B, unpack(state))

-- distinct users (HyperLogLog), in chunks small enough for unpack
local function pfadd(t, ttl)
  for key, set in pairs(t) do
    local m = {}
    for u in pairs(set) do
      m[#m + 1] = u
      if #m >= 4000 then redis.call('PFADD', key, unpack(m)); m = {} end
    end
    if #m > 0 then redis.call('PFADD', key, unpack(m)) end
    redis.call('EXPIRE', key, ttl)
  end
end
pfadd(hll_all, RTTL)
pfadd(hll_min, WTTL)

-- funnel orders / payments / GMV, whole stream and per minute
for k, n in pairs(fun) do redis.call('HINCRBY', F, k, n) end
for minute, w in pairs(funw) do
  local key = B .. ':fw:' .. minute
  for k, n in pairs(w) do redis.call('HINCRBY', key, k, n) end
  redis.call('EXPIRE', key, WTTL)
end

-- distributor leaderboard, trimmed to the top REFKEEP when it doubles
local function board(key, t)
  local any = false
  for ref, n in pairs(t) do redis.call('ZINCRBY', key, n, ref); any = true end
  if any and redis.call('ZCARD', key) > 2 * REFKEEP then redis.call('ZREMRANGEBYRANK', key, 0, -(REFKEEP + 1)) end
end
board(REFO, refo)
board(REFG, refg)

for sku in pairs(skus) do redis.call('SADD', SKUS, sku) end
for sale in pairs(sales) do redis.call('SADD', KEYS[2], sale) end
-- the room's long-lived keys live as long as the room gets events (EXPIRE of a missing key is a no-op)
for _, k in ipairs({B, ON, OFF, SEC, F, SKUS, REFO, REFG, KEYS[2]}) do redis.call('EXPIRE', k, RTTL) end

-- spike input: the stream's per-second event counts since the last evaluated second
local spike, lo, counts = '', 0, ''
if SPF ~= '' then spike, lo, counts = spike_input(B, SEC, SPF, SPW, SPMAX, st, newest, cutoff) end
return {applied, dups, late, old, replay, newest, spike, lo, counts}
