#!lua
-- counters_lib.lua: shared by counters_room.lua and counters_sale.lua (the store prepends it, so the
-- "#!lua" line above is the first line of both scripts: Redis 7+ then treats them as scripts with
-- flags, refusing them before they run under OOM / READONLY / min-replicas trouble instead of half-way
-- through, and allowing only keys of the declared keys' slot. Every key they touch is derived from
-- KEYS[1] and shares its hash tag, so one slot, as Redis Cluster needs.)
--
-- Per (stream, partition) state of one room or sale, kept in its counter hash B:
--   wm:<st>:<p>  position watermark (record offset * 10000 + index): events at or below it are replays
--   nw:<st>:<p>  newest event time seen on the partition (lateness and the dedupe horizon are relative to it)
--   dl:<st>:<p>  lowest dedupe bucket that may still exist
--   dc:<st>:<p>  "<bucket> <ids in it> <ids in the bucket before>": sizes the next bucket's shards
--   ds:<st>:<p>:<bucket>  shard count of one dedupe bucket
--
-- Dedupe: an event's id arrives as a 64-bit digest (decimal). Digests are kept in sets per 10 s
-- event-time bucket, split into 1..64 shards sized from the previous bucket so each set stays under
-- set-max-intset-entries (512): Redis then stores them as integer sets, 8 bytes per id instead of
-- ~50-80 for a hashtable of strings.
--
-- Every shard set of a bucket is created with the bucket (holding the SENTINEL member), so a set
-- that is missing later was expired or evicted, never just empty: its ids can no longer be checked,
-- and events of that bucket are dropped as too old rather than counted a second time. Buckets are
-- deleted by event time (part_finish, the same clock as the horizon); their TTL is the room's idle
-- TTL, so they live as long as the state (nw) that defines the horizon.

local floor = math.floor
local DBW = 10000
local SHARD_TARGET = 256
local MAX_SHARDS = 64
local SENTINEL = '0'

local function part_state(B, st, parts, p)
  local s = parts.map[p]
  if s == nil then
    local f = st .. ':' .. p
    local v = redis.call('HMGET', B, 'wm:' .. f, 'nw:' .. f, 'dl:' .. f, 'dc:' .. f)
    s = {f = f, wm = tonumber(v[1]) or -1, nw = tonumber(v[2]) or 0, dl = tonumber(v[3]), cc = 0, pc = 0,
         shards = {}, names = {}, touched = {}, gone = {}}
    if v[4] then
      local a, b, c = string.match(v[4], '(%S+) (%S+) (%S+)')
      s.cb, s.cc, s.pc = tonumber(a), tonumber(b), tonumber(c)
    end
    parts.map[p] = s
    parts.list[#parts.list + 1] = p
  end
  return s
end

local function dd_shards(B, s, b)
  local S = s.shards[b]
  if S then return S end
  local field = 'ds:' .. s.f .. ':' .. b
  S = tonumber(redis.call('HGET', B, field))
  if not S then
    local want = math.ceil(math.max(s.pc, s.cc) / SHARD_TARGET)
    S = 1
    while S < want and S < MAX_SHARDS do S = S * 2 end
    redis.call('HSET', B, field, S)
    -- the bucket's sets exist from now on (see SENTINEL), so later a missing one means expired
    local names = {}
    for i = 0, S - 1 do
      local key = B .. ':dd:' .. s.f .. ':' .. b .. ':' .. i
      redis.call('SADD', key, SENTINEL)
      names[i] = key
      s.touched[key] = true
    end
    s.names[b] = names
  end
  s.shards[b] = S
  return S
end

-- true when the digest was not seen before (it is recorded now), false for a duplicate, nil when
-- the bucket's set is gone (expired or evicted): the id cannot be checked, so it must not count
local function dd_add(B, s, digest, ts)
  local b = floor(ts / DBW)
  if s.cb == nil or b > s.cb then
    if s.cb ~= nil and b == s.cb + 1 then s.pc = s.cc else s.pc = 0 end
    s.cb, s.cc = b, 0
  end
  local S = dd_shards(B, s, b)
  local shard = tonumber(string.sub(digest, -4)) % S
  local names = s.names[b]
  if names == nil then names = {}; s.names[b] = names end
  local key = names[shard]
  if key == nil then
    key = B .. ':dd:' .. s.f .. ':' .. b .. ':' .. shard
    names[shard] = key
    if redis.call('EXISTS', key) == 0 then s.gone[key] = true else s.touched[key] = true end
  end
  if s.gone[key] then return nil end
  if redis.call('SADD', key, digest) == 0 then return false end
  if b == s.cb then s.cc = s.cc + 1 end
  return true
end

local function dd_drop(B, s, b)
  local field = 'ds:' .. s.f .. ':' .. b
  local S = tonumber(redis.call('HGET', B, field))
  if S then
    for i = 0, S - 1 do redis.call('DEL', B .. ':dd:' .. s.f .. ':' .. b .. ':' .. i) end
    redis.call('HDEL', B, field)
  end
end

-- Whether an event of partition state s at position off (digest, event time ts) is counted:
-- APPLY, or REPLAY (a redelivery at or behind the watermark), DUP (a producer duplicate: same id at a
-- new position), OLD (behind the dedupe horizon, or its dedupe set is gone: cannot be checked).
-- The watermark alone never skips an event: one at or behind it whose id is new comes from a topic
-- that was deleted and recreated (its offsets restarted) or otherwise reset; it is counted, the
-- watermark moves back to it and `resets` goes up. Exactly once rests on the event ids.
local APPLY, REPLAY, DUP, OLD = 1, 2, 3, 4
local resets = 0
local function admit(B, s, off, digest, ts, DD)
  local behind = off <= s.wm
  local fresh = nil
  if ts >= s.nw - DD then fresh = dd_add(B, s, digest, ts) end
  if behind then
    if not fresh then return REPLAY end
    resets = resets + 1
  end
  s.wm = off
  if fresh then return APPLY end
  if fresh == false then return DUP end
  return OLD
end

-- drop buckets behind the partition's dedupe horizon (event time); refresh the TTL of the sets used
-- (DTTL: the idle TTL of the room or sale); return state fields
local function part_finish(B, s, DD, DTTL, out)
  local hb = floor((s.nw - DD) / DBW)
  local from = s.dl or hb
  if hb - from > 200 then
    local prefix = 'ds:' .. s.f .. ':'
    for _, fld in ipairs(redis.call('HKEYS', B)) do
      if string.sub(fld, 1, #prefix) == prefix then
        local b = tonumber(string.sub(fld, #prefix + 1))
        if b and b < hb then dd_drop(B, s, b) end
      end
    end
  else
    for b = from, hb - 1 do dd_drop(B, s, b) end
  end
  for k in pairs(s.touched) do redis.call('EXPIRE', k, DTTL) end
  local n = #out
  out[n + 1] = 'wm:' .. s.f; out[n + 2] = s.wm
  out[n + 3] = 'nw:' .. s.f; out[n + 4] = s.nw
  out[n + 5] = 'dl:' .. s.f; out[n + 6] = hb
  if s.cb then
    out[n + 7] = 'dc:' .. s.f; out[n + 8] = string.format('%d %d %d', s.cb, s.cc, s.pc)
  end
end

-- per-second buckets: add packed "a b c ..." values into SEC fields, for seconds not yet trimmed
local function add_buckets(SEC, secs, suffix, cutoff)
  local fields, vals = {}, {}
  for sec, b in pairs(secs) do
    if sec >= cutoff then fields[#fields + 1] = sec .. suffix; vals[#vals + 1] = b end
  end
  if #fields == 0 then return end
  local old = redis.call('HMGET', SEC, unpack(fields))
  local out = {}
  for j, f in ipairs(fields) do
    local b = vals[j]
    if old[j] then
      local k = 1
      for x in string.gmatch(old[j], '%S+') do b[k] = b[k] + tonumber(x); k = k + 1 end
    end
    out[#out + 1] = f
    out[#out + 1] = table.concat(b, ' ')
  end
  redis.call('HSET', SEC, unpack(out))
end

-- the spike detector's input: its stored state and the first component of each second's bucket
-- from just before the last evaluated second (or SPMAX seconds back) up to the newest second,
-- packed as one space-separated string (a reply of one bulk string parses far faster than an array)
local function spike_input(B, SEC, SPF, SPW, SPMAX, suffix, newest, cutoff)
  local spike = redis.call('HGET', B, SPF) or ''
  local hi = floor(newest / 1000)
  local lo = hi - SPMAX + 1
  if spike ~= '' then
    local ok, obj = pcall(cjson.decode, spike)
    if ok and type(obj) == 'table' and type(obj.t) == 'number' and obj.t + 2 - 2 * SPW > lo then
      lo = obj.t + 2 - 2 * SPW
    end
  end
  if lo < cutoff then lo = cutoff end
  local counts = {}
  if hi >= lo then
    local f = {}
    for sec = lo, hi do f[#f + 1] = sec .. suffix end
    local raw = redis.call('HMGET', SEC, unpack(f))
    for j = 1, #f do
      local v = raw[j]
      counts[j] = v and string.match(v, '%S+') or '0'
    end
  end
  return spike, lo, table.concat(counts, ' ')
end

-- delete per-second fields (each second has the given suffixes) below cutoff; returns the new low mark
local function trim_buckets(SEC, sl, cutoff, keep, suffixes)
  if sl == nil then return cutoff end
  if cutoff <= sl then return sl end
  if cutoff - sl <= 2 * keep then
    for sec = sl, cutoff - 1 do
      local f = {}
      for _, sfx in ipairs(suffixes) do f[#f + 1] = sec .. sfx end
      redis.call('HDEL', SEC, unpack(f))
    end
  else
    for _, f in ipairs(redis.call('HKEYS', SEC)) do
      local sec = tonumber(string.match(f, '^(%d+)'))
      if sec and sec < cutoff then redis.call('HDEL', SEC, f) end
    end
  end
  return cutoff
end
