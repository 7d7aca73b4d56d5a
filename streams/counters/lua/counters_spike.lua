#!lua
-- counters_spike.lua: store a subject's spike-detector state and its new alerts (compare-and-set).
-- ("#!lua": Redis 7+ refuses the script before it runs under OOM / READONLY, never half-way; every key
-- it touches shares the hash tag of KEYS[1], one slot.)
--
-- KEYS[1]  the room's or sale's counter hash (fs:{r:<room>}:cnt or fs:{s:<sale>}:cnt)
-- ARGV[1]  state field   ARGV[2] the last evaluated second the caller started from ('' = none)
-- ARGV[3]  the new state JSON   ARGV[4] alerts kept   ARGV[5] idle TTL s
-- ARGV[6..] alerts, 3 fields each: alert id, alert time ms, alert JSON
--
-- The state is written only if nobody advanced it since the caller read it (a zombie worker after a
-- rebalance loses); alerts are keyed by their deterministic id, so storing one twice is harmless.
-- Returns 1 when stored, 0 when the state had moved on.

local B = KEYS[1]
local cur = redis.call('HGET', B, ARGV[1])
local t = ''
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  if ok and type(obj) == 'table' and type(obj.t) == 'number' then t = string.format('%d', obj.t) end
end
if t ~= ARGV[2] then return 0 end
redis.call('HSET', B, ARGV[1], ARGV[3])
if #ARGV >= 6 then
  local Z, D = B .. ':spk', B .. ':spk:d'
  for i = 6, #ARGV, 3 do
    redis.call('ZADD', Z, ARGV[i + 1], ARGV[i])
    redis.call('HSET', D, ARGV[i], ARGV[i + 2])
  end
  local keep = tonumber(ARGV[4])
  local extra = redis.call('ZCARD', Z) - keep
  if extra > 0 then
    local gone = redis.call('ZRANGE', Z, 0, extra - 1)
    redis.call('ZREMRANGEBYRANK', Z, 0, extra - 1)
    redis.call('HDEL', D, unpack(gone))
  end
  redis.call('EXPIRE', Z, ARGV[5])
  redis.call('EXPIRE', D, ARGV[5])
end
return 1
