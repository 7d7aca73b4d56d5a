#!lua
-- Release reservations whose deadline has passed, for ONE sale; report stock for gauges.
-- KEYS: 1 sale hash, 2 orders hash, 3 users hash, 4 deadlines zset, 5 outbox zset
-- ARGV: 1 now (epoch ms), 2 max deadlines handled this call (keeps one call short: Redis is single-threaded)
-- Returns {released, allotted, available, reserved, sold, status, deadlines left, deadlines still due,
--          refunded (units refunded without restock: the invariant's fourth term)}:
-- the caller calls again while some are still due (a burst is worked off in one sweeper tick).
local sale_k, orders_k, users_k, dl_k, outbox_k = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', dl_k, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local released = 0
if #due > 0 then
  local s = redis.call('HMGET', sale_k, 'sale_id', 'sku', 'room_id', 'available', 'reserved', 'expired',
                       'allotted', 'removal_pending')
  local available, reserved, expired = tonumber(s[4]), tonumber(s[5]), tonumber(s[6] or '0')
  local allotted, pending = tonumber(s[7] or '0'), tonumber(s[8] or '0')
  for _, order_id in ipairs(due) do
    local prev = redis.call('HGET', orders_k, order_id)
    redis.call('ZREM', dl_k, order_id)
    if prev then
      local rec = cjson.decode(prev)
      if rec.s == 'reserved' then
        -- released units first pay off a pending removal (see stock.lua): they are not sold again
        local pay = math.min(pending, rec.q)
        pending = pending - pay
        allotted = allotted - pay
        reserved = reserved - rec.q
        available = available + rec.q - pay
        expired = expired + 1
        local held = redis.call('HINCRBY', users_k, rec.u, -rec.q)
        if held <= 0 then redis.call('HDEL', users_k, rec.u) end
        rec.s = 'expired'; rec.x = now
        redis.call('HSET', orders_k, order_id, cjson.encode(rec))
        redis.call('ZADD', outbox_k, 0, cjson.encode({k = 'expired', order_id = order_id, sale_id = s[1],
          sku = s[2], room_id = s[3], user_id = rec.u, qty = rec.q, cause = 'ttl', at = rec.d}))
        released = released + 1
      end
    end
  end
  local fields = {'available', available, 'reserved', reserved, 'expired', expired, 'allotted', allotted,
                  'removal_pending', pending}
  if available > 0 then fields[#fields + 1] = 'soldout'; fields[#fields + 1] = 0 end
  redis.call('HSET', sale_k, unpack(fields))
end
local st = redis.call('HMGET', sale_k, 'allotted', 'available', 'reserved', 'sold', 'status', 'refunded')
return {released, st[1] or '0', st[2] or '0', st[3] or '0', st[4] or '0', st[5] or '', redis.call('ZCARD', dl_k),
        redis.call('ZCOUNT', dl_k, '-inf', now), st[6] or '0'}
