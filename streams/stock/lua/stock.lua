#!lua
-- Apply a batch of order-side operations to ONE sale, atomically and idempotently.
-- KEYS: 1 sale hash, 2 orders hash, 3 users hash, 4 deadlines zset, 5 dups hash, 6 applied set, 7 outbox zset,
--       8 commission ledger hash (order -> entry), 9 distributor totals hash (distributor -> totals)
-- ARGV[1]: JSON array of ops {op=open|close|adjust|place|paid|cancel|refund, ...}; ARGV[2]: now (epoch ms);
-- ARGV[3]: how long (ms) the state of a sale that was never opened is kept (attempts on an unknown
-- sale id must not leave keys behind forever; the sale's open makes them permanent)
-- Returns a JSON array with one result per op. Replays (same event id) change nothing and
-- return the stored decision, flagged replay=true.
local sale_k, orders_k, users_k, dl_k, dups_k, applied_k, outbox_k, ledger_k, dist_k =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local ops = cjson.decode(ARGV[1])

-- Redis refusing work now (out of memory, a read-only replica after a failover, loading, busy...)
-- is not bad data: the call fails as a whole, so the worker waits and retries the batch. The
-- "#!lua" line makes Redis (7+) check OOM, READONLY and min-replicas before the script runs, so
-- such a refusal never leaves a batch half-applied.
local UNAVAILABLE = {OOM = true, READONLY = true, MASTERDOWN = true, LOADING = true, BUSY = true, TRYAGAIN = true,
                     CLUSTERDOWN = true, NOREPLICAS = true, MISCONF = true}
local function unavailable(err)
  local msg = type(err) == 'table' and tostring(err.err) or tostring(err)
  local code = string.match(msg, '^(%u+)')
  if code and UNAVAILABLE[code] then return msg end
  return nil
end
local unknown_ttl_ms = tonumber(ARGV[3] or '86400000')

local S = {}
local raw = redis.call('HGETALL', sale_k)
for i = 1, #raw, 2 do S[raw[i]] = raw[i + 1] end
local exists = S.sale_id ~= nil
local NUM = {'allotted', 'available', 'reserved', 'sold', 'price', 'per_user_limit', 'starts_at', 'ends_at',
             'ttl_ms', 'attempts', 'accepted', 'rej_sold_out', 'rej_limit_exceeded', 'rej_sale_not_active',
             'rej_duplicate', 'rej_invalid', 'expired', 'cancelled', 'paid', 'gmv', 'soldout', 'opened_at',
             'removal_pending', 'rej_order_id_taken', 'refunded', 'restocked', 'refunds', 'refunded_gmv',
             'commission_bps', 'head_commission_bps'}
for _, f in ipairs(NUM) do S[f] = tonumber(S[f] or '0') end
local dirty = false

-- A closed sale may be re-opened by a new sale.opened. The sweeper retires a closed sale in two
-- steps (retire.lua marks it, then removes it from the active set, which lives in another cluster
-- slot): a re-open must not slip between them, or its reservations would never be swept. So while a
-- retirement's mark is live the batch waits (TRYAGAIN: retried like any Redis refusal, before any
-- write here); a mark whose lease ran out (its retirer died or stalled) is taken away, and a retirer
-- that finds its mark gone puts the sale back in the active set.
if S.retiring then
  local reopens = false
  for _, o in ipairs(ops) do
    if o.op == 'open' then reopens = true end
  end
  if reopens then
    if tonumber(S.retiring_until or '0') > tonumber(ARGV[2]) then
      return redis.error_reply('TRYAGAIN sale ' .. tostring(S.sale_id) .. ' is being retired; re-open retried')
    end
    redis.call('HDEL', sale_k, 'retiring', 'retiring_until')
    S.retiring = nil
    S.retiring_until = nil
  end
end

local function outbox(item)
  redis.call('ZADD', outbox_k, 0, cjson.encode(item))
end

local function note_sold_out(ts)
  -- Only an open sale sells out: stock.adjusted on a closed sale writes nothing to its outbox, so a
  -- closed sale gains deadlines or outbox items only by being re-opened (what retire.lua relies on).
  if S.available <= 0 and S.status ~= 'open' then
    S.soldout = 1
  elseif S.available <= 0 then
    if S.soldout == 0 then S.soldout = 1 end
    if not S.sold_out_at then
      S.sold_out_at = tostring(ts)
      outbox({k = 'sold_out', sale_id = S.sale_id, sku = S.sku, room_id = S.room_id,
              at = ts, opened_at = S.opened_at, allotted = S.allotted})
    end
  else
    S.soldout = 0
  end
end

-- Units released from a reservation first pay off a pending removal (stock.adjusted asked to remove
-- units that were reserved): those leave the allotment instead of being sold again.
local function release(order_id, rec, state, ts)
  local pay = math.min(S.removal_pending, rec.q)
  S.removal_pending = S.removal_pending - pay
  S.allotted = S.allotted - pay
  S.reserved = S.reserved - rec.q
  S.available = S.available + rec.q - pay
  local held = redis.call('HINCRBY', users_k, rec.u, -rec.q)
  if held <= 0 then redis.call('HDEL', users_k, rec.u) end
  redis.call('ZREM', dl_k, order_id)
  rec.s = state
  rec.x = ts
  redis.call('HSET', orders_k, order_id, cjson.encode(rec))
  outbox({k = 'expired', order_id = order_id, sale_id = S.sale_id, sku = S.sku, room_id = S.room_id,
          user_id = rec.u, qty = rec.q, cause = (state == 'cancelled') and 'cancelled' or 'ttl', at = ts})
  if S.available > 0 then S.soldout = 0 end
end

-- floor(amount * bps / 10000) exactly: Lua numbers are doubles, exact only below 2^53, and
-- amount * bps may reach 10^18; split amount = hi * 10000 + lo so each product stays below 10^14.
local function commission(amount, bps)
  local hi = math.floor(amount / 10000)
  local lo = amount - hi * 10000
  return hi * bps + math.floor(lo * bps / 10000)
end

-- A distributor's totals in this sale (orders paid, paid GMV, commission earned, refunds, refunded GMV,
-- commission clawed back), one JSON value per distributor: add the increments in ``inc``.
local function add_totals(distributor, inc)
  local raw_t = redis.call('HGET', dist_k, distributor)
  local t = raw_t and cjson.decode(raw_t) or {}
  for _, f in ipairs({'o', 'g', 'e', 'r', 'rg', 'k'}) do
    t[f] = (tonumber(t[f]) or 0) + (inc[f] or 0)
  end
  redis.call('HSET', dist_k, distributor, cjson.encode(t))
end

-- The order's distributor: the referrer of a share_link order (nil for every other order).
local function distributor_of(rec)
  if rec.c == 'share_link' and type(rec.f) == 'string' and rec.f ~= '' then return rec.f end
  return nil
end

local function decision(order_id, rec, replay)
  local out = (rec.s == 'rejected') and 'rejected' or 'accepted'
  return {op = 'place', o = order_id, out = out, r = rec.r, d = rec.d, q = rec.q, p = rec.p, s = rec.s,
          replay = replay}
end

local res = {}
-- One op. Runs under pcall: an op that raises (a corrupt order record, say) is answered
-- {op='error'} and its in-memory changes to S are undone; the other ops of the batch still apply and
-- the sale hash is written once at the end, so a failure never leaves orders and counters apart.
local function apply(i, o)
  local op = o.op
  if op == 'place' then
    local prev = redis.call('HGET', orders_k, o.order_id)
    if prev then
      local rec = cjson.decode(prev)
      if rec.u ~= o.user_id then
        -- An order id belongs to the user who first placed it: another user reusing it gets a
        -- rejection of its own (once per attempt), never the owner's decision.
        local seen = redis.call('HSETNX', dups_k, cjson.encode({'taken', o.event_id, o.user_id}), o.order_id)
        if seen == 1 then
          S.attempts = S.attempts + 1
          S.rej_order_id_taken = S.rej_order_id_taken + 1
          dirty = true
        end
        res[i] = {op = 'place', o = o.order_id, out = 'rejected', r = 'order_id_taken', q = o.qty,
                  p = o.unit_price, s = 'rejected', d = 0, replay = (seen == 0)}
      elseif rec.e == o.event_id then
        res[i] = decision(o.order_id, rec, true)
      else
        local seen = redis.call('HSETNX', dups_k, o.event_id, o.order_id)
        if seen == 1 then
          S.attempts = S.attempts + 1
          S.rej_duplicate = S.rej_duplicate + 1
          dirty = true
        end
        res[i] = {op = 'place', o = o.order_id, out = 'rejected', r = 'duplicate', q = o.qty, p = o.unit_price,
                  s = rec.s, d = 0, replay = (seen == 0)}
      end
    else
      S.attempts = S.attempts + 1
      dirty = true
      local reason = nil
      local detail = ''
      local held = 0
      if (not exists) or S.status ~= 'open' or o.ts < S.starts_at or o.ts >= S.ends_at then
        reason = 'sale_not_active'
      elseif o.sku ~= S.sku then
        reason = 'invalid'; detail = 'sku does not match the sale'
      elseif o.unit_price ~= S.price then
        reason = 'invalid'; detail = 'unit_price does not match the sale price'
      else
        held = tonumber(redis.call('HGET', users_k, o.user_id) or '0')
        if held + o.qty > S.per_user_limit then
          reason = 'limit_exceeded'
        elseif S.available < o.qty then
          reason = 'sold_out'
        end
      end
      local rec = {u = o.user_id, q = o.qty, p = o.unit_price, e = o.event_id, t = o.ts, k = o.sku, d = 0,
                   c = o.channel}
      if type(o.referrer_id) == 'string' then rec.f = o.referrer_id end
      if reason then
        rec.s = 'rejected'; rec.r = reason
        S['rej_' .. reason] = S['rej_' .. reason] + 1
      else
        rec.s = 'reserved'; rec.r = ''
        rec.d = o.ts + S.ttl_ms
        S.available = S.available - o.qty
        S.reserved = S.reserved + o.qty
        S.accepted = S.accepted + 1
        redis.call('HINCRBY', users_k, o.user_id, o.qty)
        redis.call('ZADD', dl_k, rec.d, o.order_id)
        note_sold_out(o.ts)
      end
      redis.call('HSET', orders_k, o.order_id, cjson.encode(rec))
      local d = decision(o.order_id, rec, false)
      d.detail = detail
      res[i] = d
    end
  elseif op == 'paid' or op == 'cancel' then
    local prev = redis.call('HGET', orders_k, o.order_id)
    local status
    if not prev then
      status = 'unknown_order'
    else
      local rec = cjson.decode(prev)
      if rec.u ~= o.user_id then
        status = 'not_owner'  -- only the order's own user can pay or cancel it
      elseif rec.s == 'reserved' then
        dirty = true
        if op == 'paid' and o.ts > rec.d then
          -- Paid after the deadline (by the pipeline's clock, not the sweeper's timing): the
          -- reservation had lapsed, so it is released as expired and the payment is refused.
          S.expired = S.expired + 1
          release(o.order_id, rec, 'expired', rec.d)
          status = 'late_payment'
        elseif op == 'paid' then
          S.reserved = S.reserved - rec.q
          S.sold = S.sold + rec.q
          S.paid = S.paid + 1
          S.gmv = S.gmv + rec.q * rec.p
          redis.call('ZREM', dl_k, o.order_id)
          rec.s = 'sold'; rec.x = o.ts
          redis.call('HSET', orders_k, o.order_id, cjson.encode(rec))
          status = 'paid'
          -- the distributor's commission accrues here, in the step that sells the order: once per order
          local dist = distributor_of(rec)
          if dist then
            local amount = rec.q * rec.p
            local c = commission(amount, S.commission_bps)
            local entry = {d = dist, g = amount, b = S.commission_bps, c = c, k = 0, t = o.ts}
            if redis.call('HSETNX', ledger_k, o.order_id, cjson.encode(entry)) == 1 then
              add_totals(dist, {o = 1, g = amount, e = c})
            end
          end
        else
          S.cancelled = S.cancelled + 1
          release(o.order_id, rec, 'cancelled', o.ts)
          status = 'cancelled'
        end
      elseif rec.s == 'rejected' then
        status = 'not_accepted'
      elseif op == 'paid' then
        status = (rec.s == 'sold') and 'already_paid' or 'late_payment'
      else
        status = (rec.s == 'cancelled' or rec.s == 'expired') and 'already_released' or 'not_cancellable'
      end
    end
    res[i] = {op = op, o = o.order_id, status = status}
  elseif op == 'refund' then
    -- A refund event is answered once: its answer is kept (dups 'rf:<event>'), so a replay changes
    -- nothing and answers the same, even if the order changed since (a refusal before the payment).
    local answered = 'rf:' .. o.event_id
    local stored = redis.call('HGET', dups_k, answered)
    local status
    local restocked = 0
    if stored then
      status = stored
      res[i] = {op = op, o = o.order_id, status = status, replay = true}
    else
      local prev = redis.call('HGET', orders_k, o.order_id)
      local rec = prev and cjson.decode(prev)
      if not rec then
        status = 'unknown_order'
      elseif rec.u ~= o.user_id then
        status = 'not_owner'
      elseif rec.s == 'refunded' then
        status = 'already_refunded'
      elseif rec.s ~= 'sold' then
        status = 'not_paid'
      elseif o.amount >= 0 and o.amount ~= rec.q * rec.p then
        status = 'amount_mismatch'
      else
        dirty = true
        local amount = rec.q * rec.p
        S.sold = S.sold - rec.q
        S.paid = S.paid - 1
        S.gmv = S.gmv - amount
        S.refunds = S.refunds + 1
        S.refunded_gmv = S.refunded_gmv + amount
        local held = redis.call('HINCRBY', users_k, rec.u, -rec.q)
        if held <= 0 then redis.call('HDEL', users_k, rec.u) end
        if o.restock then
          -- back on sale, but a pending removal is paid off first (those units leave the allotment)
          local pay = math.min(S.removal_pending, rec.q)
          S.removal_pending = S.removal_pending - pay
          S.allotted = S.allotted - pay
          S.available = S.available + rec.q - pay
          restocked = rec.q - pay
          S.restocked = S.restocked + restocked
          if S.available > 0 then S.soldout = 0 end
        else
          S.refunded = S.refunded + rec.q  -- the goods left: out of stock for good (the invariant's term)
        end
        rec.s = 'refunded'; rec.n = o.event_id; rec.y = o.ts; rec.w = o.restock and true or false
        redis.call('HSET', orders_k, o.order_id, cjson.encode(rec))
        local raw_e = redis.call('HGET', ledger_k, o.order_id)
        if raw_e then
          local entry = cjson.decode(raw_e)
          if not entry.y then
            entry.k = entry.c; entry.y = o.ts
            redis.call('HSET', ledger_k, o.order_id, cjson.encode(entry))
            add_totals(entry.d, {r = 1, rg = entry.g, k = entry.c})
          end
        end
        status = 'refunded'
      end
      redis.call('HSET', dups_k, answered, status)
      res[i] = {op = op, o = o.order_id, status = status, restocked = restocked}
    end
  elseif op == 'open' or op == 'close' or op == 'adjust' then
    local status
    if redis.call('SADD', applied_k, o.event_id) == 0 then
      status = 'replay'
      if op == 'adjust' then
        local stored = redis.call('HGET', dups_k, 'adj:' .. o.event_id)
        if stored then res[i] = cjson.decode(stored); res[i].replay = true end
      end
    elseif op == 'open' then
      dirty = true
      if not exists then
        exists = true
        S.sale_id = o.sale_id; S.sku = o.sku; S.room_id = o.room_id
        S.allotted = o.allotment; S.available = o.allotment; S.reserved = 0; S.sold = 0
        S.opened_at = o.starts_at
        S.soldout = 0
        status = 'opened'
        for _, k in ipairs({sale_k, orders_k, dups_k, applied_k}) do redis.call('PERSIST', k) end
      else
        status = 'updated'
      end
      S.price = o.price; S.per_user_limit = o.per_user_limit
      S.starts_at = o.starts_at; S.ends_at = o.ends_at; S.ttl_ms = o.ttl_ms
      S.status = 'open'
      -- the product as the host names it (optional; a JSON null decodes truthy in Lua, hence type())
      if type(o.title) == 'string' then S.title = o.title end
      if type(o.image_url) == 'string' then S.image_url = o.image_url end
      -- the commission rule (basis points); a re-open without one keeps the current rule
      if type(o.commission_bps) == 'number' then S.commission_bps = o.commission_bps end
      if type(o.head_commission_bps) == 'number' then S.head_commission_bps = o.head_commission_bps end
      note_sold_out(o.ts)
    elseif not exists then
      status = 'unknown_sale'
      redis.call('SREM', applied_k, o.event_id)
    elseif op == 'close' then
      dirty = true
      S.status = 'closed'; S.closed_at = tostring(o.ts)
      status = 'closed'
    else
      dirty = true
      -- Removing more than is available removes what is available now and the rest as reservations
      -- are released (a pending removal); adding pays off a pending removal first.
      local applied
      if o.delta < 0 then
        local take = math.min(-o.delta, S.available)
        S.removal_pending = S.removal_pending + (-o.delta - take)
        applied = -take
      else
        local pay = math.min(S.removal_pending, o.delta)
        S.removal_pending = S.removal_pending - pay
        applied = o.delta - pay
      end
      S.allotted = S.allotted + applied
      S.available = S.available + applied
      note_sold_out(o.ts)
      status = 'adjusted'
      res[i] = {op = op, status = status, delta = o.delta, applied = applied, pending = S.removal_pending,
                allotted = S.allotted, available = S.available}
      redis.call('HSET', dups_k, 'adj:' .. o.event_id, cjson.encode(res[i]))
    end
    if not res[i] then res[i] = {op = op, status = status} end
  else
    res[i] = {op = op, status = 'bad_op'}
  end
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

for i, o in ipairs(ops) do
  local before, was_dirty, existed = copy(S), dirty, exists
  local ok, err = pcall(apply, i, o)
  local refused = (not ok) and unavailable(err)
  if refused then return redis.error_reply(refused) end
  if not ok then
    S, dirty, exists = before, was_dirty, existed
    res[i] = {op = 'error', err = tostring(err)}
  end
end

if dirty and exists then
  local flat = {}
  for k, v in pairs(S) do
    flat[#flat + 1] = k
    flat[#flat + 1] = (type(v) == 'number') and string.format('%d', v) or v
  end
  redis.call('HSET', sale_k, unpack(flat))
elseif dirty then
  -- Attempts on a sale not opened (yet) are rejected sale_not_active (or duplicate); keep their
  -- counters so they add up however the events were batched (the sale's open keeps them).
  redis.call('HSET', sale_k, 'attempts', string.format('%d', S.attempts),
             'rej_sale_not_active', string.format('%d', S.rej_sale_not_active),
             'rej_duplicate', string.format('%d', S.rej_duplicate))
end
if not exists then
  for _, k in ipairs({sale_k, orders_k, dups_k, applied_k}) do redis.call('PEXPIRE', k, unknown_ttl_ms) end
end
return cjson.encode(res)
