-- counters_sale.lua: apply one sale's order-side events to its rate buckets, idempotently.
--
-- KEYS[1]  the sale's counter hash (fs:{s:<sale>}:cnt); other counter keys derive from it
-- KEYS[2]  the stock core's order hash (fs:{s:<sale>}:orders), read only: the stock core's verdict on payments
-- ARGV[1]  stream code: o (orders topic) | d (order-decisions topic)
-- ARGV[2]  lateness ms   ARGV[3] dedupe horizon ms   ARGV[4] seconds of buckets kept
-- ARGV[5]  dedupe-set TTL s (the idle TTL: buckets are deleted by event time)   ARGV[6] idle TTL s
-- ARGV[7]  spike state field ('' = none)   ARGV[8] spike window s   ARGV[9] max seconds of counts returned
-- ARGV[10] the events as a JSON array of arrays:
--   [partition, position (offset * 10000 + index), event id digest (decimal string), ts, kind, order_id, n,
--    user, pipeline time (the record's timestamp, ms)]
--   kinds: O order placed (an attempt), A order accepted (n units), Y order paid (n = the client's amount,
--   -1 = none; only compared, never counted), X order cancelled, U order refunded (n = the client's amount
--   or -1; the stock core refuses a refund whose amount differs from what was paid).
--   Y and U events also carry the full event id after the digest, as "<digest>|<event id>".
--
-- The watermark / dedupe / lateness rules are those of counters_room.lua (admit()). Besides, each
-- order's payment is counted once and only as the stock core confirms it: the verdict for a paid
-- event is the units x unit price of the stock core's order record when the stock core sells the
-- order on that payment (its own user, a held reservation, in time by the pipeline's clock), else -1
-- (another event settled the order, the order was rejected, released or cancelled, the payment was
-- late or not the owner's). The first payment that settles the order is stored with its verdict, so
-- the verdict is the same however often it is asked and the room call that follows may be retried
-- after a crash. Room GMV is then the sum of the sales' GMV, which is the stock core's `gmv`.
--
-- A refund counts (paid -1, GMV - amount, net of refunds) as the stock core refunds: the order's payment
-- counted here (PAID holds its amount), no refund counted before (REF 'o:<order>'), its own user, and
-- no amount or the paid amount. Each U event's verdict is kept (REF 'e:<event>'), so it is the same
-- however often it is asked (the stock core keeps each refund's answer too).
--
-- Returns {applied, dups, late, too_old, replayed, stream newest ms, spike state or '', lo second,
--          {counts}, {verdicts of Y events, in order}, {verdicts of U events, in order}}
-- (counters_lib.lua is prepended)

local B = KEYS[1]
local st = ARGV[1]
local LATE, DD, KEEP = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local DTTL, RTTL = tonumber(ARGV[5]), tonumber(ARGV[6])
local SPF, SPW, SPMAX = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local SEC, PAID, REF = B .. ':sec', B .. ':paid', B .. ':ref'

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

-- The stock core's verdict on a payment, decided from its order record by the rules of stock.lua:
-- only the order's own user pays, a reservation is sold when paid at or before its deadline by the
-- pipeline's clock (the payment record's timestamp), a late payment releases it, a rejected,
-- expired or cancelled order is refused. The amount is what the stock core counts (units x the
-- order's unit price), never the client's `amount`. Returns amount or -1, and whether the payment
-- ends the order for the stock core (so no later payment of it can count).
local function stock_verdict(rec, user, pt)
  if not rec or rec.u ~= user then return -1, false end
  local q, p = tonumber(rec.q), tonumber(rec.p)
  if not q or not p then return -1, false end
  if rec.s == 'sold' or rec.s == 'refunded' then return q * p, true end  -- refunded: it was sold
  if rec.s == 'reserved' then
    if pt > (tonumber(rec.d) or 0) then return -1, true end
    return q * p, true
  end
  return -1, false
end

local applied, dups, late, old, replay = 0, 0, 0, 0, 0
local refused, mismatched = 0, 0
local tot, secs, verdicts, refunds = {}, {}, {}, {}
local function inc(t, k, n) t[k] = (t[k] or 0) + n end

local events = cjson.decode(ARGV[10])
for i = 1, #events do
  local e = events[i]
  local off, digest, ts, kind, oid, n, user, pt = e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9]
  local verdict = nil
  if kind == 'Y' then
    -- the first payment that settles the order for the stock core owns it (PAID: order -> event | amount);
    -- the verdict of an event is the same however often it is asked, so the room call may be retried
    local sep = string.find(digest, '|', 1, true)
    local eid = string.sub(digest, sep + 1)
    digest = string.sub(digest, 1, sep - 1)
    local owner = redis.call('HGET', PAID, oid)
    if not owner then
      local ends
      verdict, ends = stock_verdict(order_record(oid), user, pt)
      if ends then redis.call('HSET', PAID, oid, eid .. '|' .. string.format('%d', verdict)) end
    else
      local at = string.find(owner, '|', 1, true)
      if string.sub(owner, 1, at - 1) == eid then
        verdict = tonumber(string.sub(owner, at + 1))
      else
        verdict = -1
      end
    end
    verdicts[#verdicts + 1] = verdict
  elseif kind == 'U' then
    local sep = string.find(digest, '|', 1, true)
    local eid = string.sub(digest, sep + 1)
    digest = string.sub(digest, 1, sep - 1)
    local stored = redis.call('HGET', REF, 'e:' .. eid)
    if stored then
      verdict = tonumber(stored)
    else
      verdict = -1
      local owner = redis.call('HGET', PAID, oid)
      local at = owner and string.find(owner, '|', 1, true)
      local amount = at and tonumber(string.sub(owner, at + 1))
      if amount and amount >= 0 and redis.call('HEXISTS', REF, 'o:' .. oid) == 0 then
        local rec = order_record(oid)
        if rec and rec.u == user and (n < 0 or n == amount) then
          verdict = amount
          redis.call('HSET', REF, 'o:' .. oid, eid)
        end
      end
      redis.call('HSET', REF, 'e:' .. eid, string.format('%d', verdict))
    end
    refunds[#refunds + 1] = verdict
  elseif kind == 'X' and not redis.call('HGET', PAID, oid) then
    -- the owner's cancel of a reservation the stock core still holds releases it: no payment after it counts
    local rec = order_record(oid)
    if rec and rec.u == user and rec.s == 'reserved' then redis.call('HSET', PAID, oid, 'x:' .. digest .. '|-1') end
  end
  local ps = part_state(B, st, parts, e[1])
  local pn = ps.nw
  local v = admit(B, ps, off, digest, ts, DD)
  if v == REPLAY then
    replay = replay + 1
  elseif v == OLD then
    old = old + 1
  elseif v == DUP then
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
      if verdict >= 0 then
        inc(tot, 'paid', 1); inc(tot, 'gmv', verdict)
        if n >= 0 and n ~= verdict then mismatched = mismatched + 1 end
      else
        refused = refused + 1
      end
    elseif kind == 'U' then
      inc(tot, 'refund_events', 1)
      if verdict >= 0 then
        inc(tot, 'paid', -1); inc(tot, 'gmv', -verdict)
        inc(tot, 'refunds', 1); inc(tot, 'refunded_gmv', verdict)
      else
        inc(tot, 'refunds_refused', 1)
      end
    end
  end
end

if dups > 0 then inc(tot, 'dups', dups) end
if late > 0 then inc(tot, 'late', late) end
if old > 0 then inc(tot, 'too_old', old) end
if resets > 0 then inc(tot, 'resets', resets) end
if refused > 0 then inc(tot, 'refused', refused) end
if mismatched > 0 then inc(tot, 'amount_mismatch', mismatched) end
for k, n in pairs(tot) do redis.call('HINCRBY', B, k, n) end

if newest > nall then nall = newest end
local state = {NF, newest, 'nall', nall}
local cutoff = floor(nall / 1000) - KEEP
add_buckets(SEC, secs, '', cutoff)
sl = trim_buckets(SEC, sl, cutoff, KEEP, {''})
state[#state + 1] = 'sl'; state[#state + 1] = sl
for _, p in ipairs(parts.list) do part_finish(B, parts.map[p], DD, DTTL, state) end
redis.call('HSET', B, unpack(state))
for _, k in ipairs({B, SEC, PAID, REF}) do redis.call('EXPIRE', k, RTTL) end

local spike, lo, counts = '', 0, ''
if SPF ~= '' then spike, lo, counts = spike_input(B, SEC, SPF, SPW, SPMAX, '', newest, cutoff) end
return {applied, dups, late, old, replay, newest, spike, lo, counts, verdicts, refunds}
