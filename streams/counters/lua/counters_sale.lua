-- counters_sale.lua: apply one sale's order-side events to its rate buckets, idempotently.
--
-- KEYS[1]  the sale's counter hash (fs:{s:<sale>}:cnt); other counter keys derive from it
-- KEYS[2]  the stock core's order hash (fs:{s:<sale>}:orders), read only: prices of paid orders
-- ARGV[1]  stream code: o (orders topic) | d (order-decisions topic)
-- ARGV[2]  lateness ms   ARGV[3] dedupe horizon ms   ARGV[4] seconds of buckets kept
-- ARGV[5]  dedupe-set TTL s   ARGV[6] idle TTL s
-- ARGV[7]  spike state field ('' = none)   ARGV[8] spike window s   ARGV[9] max seconds of counts returned
-- ARGV[10] the events as a JSON array of arrays:
--   [partition, position (offset * 10000 + index), event id digest (decimal string), ts, kind, order_id, n]
--   kinds: O order placed (an attempt), A order accepted (n units), Y order paid (n amount, -1 = unknown)
--   Y events also carry the full event id after the digest, as "<digest>|<event id>", for the payment owner.
--
-- The watermark / dedupe / lateness rules are those of counters_room.lua. Besides, each order's
-- payment is counted once: the first order.paid event of an order owns it, and the verdict for a
-- paid event (its amount, or -1 when another event owns the payment or the stock core refuses it:
-- the order was rejected, or released before the payment) is the same however often it is asked,
-- so the room call that follows may be retried after a crash.
--
-- Returns {applied, dups, late, too_old, replayed, stream newest ms, spike state or '', lo second,
--          {counts}, {verdicts of Y events, in order}, unpriced}
-- (counters_lib.lua is prepended)

local B = KEYS[1]
local st = ARGV[1]
local LATE, DD, KEEP = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local DTTL, RTTL = tonumber(ARGV[5]), tonumber(ARGV[6])
local SPF, SPW, SPMAX = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local SEC, PAID = B .. ':sec', B .. ':paid'

local NF = 'n' .. st
local cur = redis.call('HMGET', B, NF, 'nall', 'sl')
local newest = tonumber(cur[1]) or 0
local nall = tonumber(cur[2]) or 0
local sl = tonumber(cur[3])

local parts = {map = {}, list = {}}

local function order_record(oid)
  local raw = redis.call('HGET', KEYS[2], oid)
  if raw then
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' then return rec end
  end
  return nil
end

-- States in which the stock core refuses a payment (not_accepted, late_payment): not counted.
local REFUSED = {rejected = true, expired = true, cancelled = true}

local applied, dups, late, old, replay, unpriced, refused = 0, 0, 0, 0, 0, 0, 0
local tot, secs, verdicts = {}, {}, {}
local function inc(t, k, n) t[k] = (t[k] or 0) + n end

local events = cjson.decode(ARGV[10])
for i = 1, #events do
  local e = events[i]
  local off, digest, ts, kind, oid, n = e[2], e[3], e[4], e[5], e[6], e[7]
  if kind == 'Y' then
    local sep = string.find(digest, '|', 1, true)
    local eid = string.sub(digest, sep + 1)
    digest = string.sub(digest, 1, sep - 1)
    local owner = redis.call('HGET', PAID, oid)
    if not owner then
      local amount = n
      local rec = order_record(oid)
      if rec and REFUSED[rec.s] then
        amount = -1; refused = refused + 1
      elseif amount < 0 then
        if rec and tonumber(rec.q) and tonumber(rec.p) then
          amount = tonumber(rec.q) * tonumber(rec.p)
        else
          amount = 0; unpriced = unpriced + 1
        end
      end
      redis.call('HSET', PAID, oid, eid .. '|' .. string.format('%d', amount))
      verdicts[#verdicts + 1] = amount
    else
      local sep = string.find(owner, '|', 1, true)
      if string.sub(owner, 1, sep - 1) == eid then
        verdicts[#verdicts + 1] = tonumber(string.sub(owner, sep + 1))
      else
        verdicts[#verdicts + 1] = -1
      end
    end
  end
  local ps = part_state(B, st, parts, e[1])
  if off <= ps.wm then
    replay = replay + 1
  else
    ps.wm = off
    local pn = ps.nw
    if ts < pn - DD then
      old = old + 1
    else
      if not dd_add(B, ps, digest, ts) then
        dups = dups + 1
      else
        applied = applied + 1
        if ts > pn then ps.nw = ts end
        if ts > newest then newest = ts end
        local in_window = ts >= pn - LATE
        if not in_window then late = late + 1 end
        local sec = floor(ts / 1000)
        local b = nil
        if in_window and (kind == 'O' or kind == 'A') then
          b = secs[sec]
          if b == nil then b = {0, 0, 0}; secs[sec] = b end
        end
        if kind == 'O' then
          inc(tot, 'attempts', 1)
          if b then b[1] = b[1] + 1 end
        elseif kind == 'A' then
          inc(tot, 'accepted', 1); inc(tot, 'accepted_units', n)
          if b then b[2] = b[2] + 1; b[3] = b[3] + n end
        elseif kind == 'Y' then
          inc(tot, 'paid_events', 1)
        end
      end
    end
  end
end

if dups > 0 then inc(tot, 'dups', dups) end
if late > 0 then inc(tot, 'late', late) end
if old > 0 then inc(tot, 'too_old', old) end
for k, n in pairs(tot) do redis.call('HINCRBY', B, k, n) end
if unpriced > 0 then redis.call('HINCRBY', B, 'unpriced', unpriced) end
if refused > 0 then redis.call('HINCRBY', B, 'refused', refused) end
if newest > nall then nall = newest end
local state = {NF, newest, 'nall', nall}
local cutoff = floor(nall / 1000) - KEEP
add_buckets(SEC, secs, '', cutoff)
sl = trim_buckets(SEC, sl, cutoff, KEEP, {''})
state[#state + 1] = 'sl'; state[#state + 1] = sl
for _, p in ipairs(parts.list) do part_finish(B, parts.map[p], DD, DTTL, state) end
redis.call('HSET', B, unpack(state))
for _, k in ipairs({B, SEC, PAID}) do redis.call('EXPIRE', k, RTTL) end

local spike, lo, counts = '', 0, ''
if SPF ~= '' then spike, lo, counts = spike_input(B, SEC, SPF, SPW, SPMAX, '', newest, cutoff) end
return {applied, dups, late, old, replay, newest, spike, lo, counts, verdicts, unpriced}
