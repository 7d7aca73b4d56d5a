-- Lease due outbox items of ONE sale so they are sent at least once (ZREM after sending).
-- KEYS: 1 outbox zset; ARGV: 1 now (epoch ms), 2 lease ms, 3 max items
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[3]))
local lease = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, m in ipairs(items) do redis.call('ZADD', KEYS[1], 'XX', lease, m) end
return items
