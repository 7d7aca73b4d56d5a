#!lua
-- Retire ONE closed sale from the sweeper's active set, in two phases around the caller's SREM
-- (the active set sits in another cluster slot, so the SREM cannot be inside this script).
-- KEYS: 1 sale hash, 2 deadlines zset, 3 outbox zset
-- ARGV: 1 'begin' | 'end', 2 now (epoch ms), 3 lease ms, 4 token of this retirement
-- begin: atomically checks status closed, no deadline and an empty outbox (a leased item is still in
--   the outbox until its send is acknowledged) and marks the sale retiring (token, lease); returns 1
--   if the caller may SREM it. While the mark's lease lives, stock.lua makes a sale.opened for this
--   sale wait (TRYAGAIN), so no re-open can slip between this check and the SREM.
-- end: clears the mark if it is still this retirement's; returns 1, or 0 if a re-open (after a lease
--   that ran out) took the mark away: the caller then puts the sale back in the active set.
local sale_k, dl_k, outbox_k = KEYS[1], KEYS[2], KEYS[3]
local phase, now, lease, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local mark = redis.call('HMGET', sale_k, 'retiring', 'retiring_until')
if phase == 'begin' then
  if mark[1] and mark[1] ~= token and tonumber(mark[2] or '0') > now then return 0 end  -- another in flight
  if redis.call('HGET', sale_k, 'status') ~= 'closed' then return 0 end
  if redis.call('ZCARD', dl_k) > 0 or redis.call('ZCARD', outbox_k) > 0 then return 0 end
  redis.call('HSET', sale_k, 'retiring', token, 'retiring_until', string.format('%d', now + lease))
  return 1
end
if mark[1] == token then
  redis.call('HDEL', sale_k, 'retiring', 'retiring_until')
  return 1
end
return 0
