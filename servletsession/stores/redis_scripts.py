"""The Lua scripts behind ``RedisStore``: each operation is one script, atomic and one round trip.

The deadline rule is the one :class:`~servletsession.stores.base.SharedStore` states: rewrite a
deadline only once it has fallen below ``now + interval``, then to ``now + interval + pad``.
"""

# Shared by the scripts. meta = HMGET(key, '#c', '#l', '#e', '#i', '#a', '#p').
PRELUDE = """
local function deadline_of(meta)
  if meta[3] == '' then return math.huge end
  return tonumber(meta[3])
end
local function next_deadline(meta, now, period, force)
  local expires = deadline_of(meta)
  local interval = tonumber(meta[4])
  local cap = math.huge
  if meta[5] and meta[5] ~= '' then cap = tonumber(meta[1]) + tonumber(meta[5]) end
  local target
  if interval <= 0 then
    target = cap
  else
    if not force and expires >= now + interval then return nil end
    target = math.min(now + interval + math.min(period, 0.1 * interval), cap)
  end
  if target == expires and not force then return nil end
  return target
end
local function keep_principal(set, key)
  -- The set lives as long as its longest-lived member (ten years stands for never).
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = 315360000000 end
  if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
end
local function write_deadline(key, meta, target, now, grace, prefix, index, id)
  if target == math.huge then
    redis.call('HSET', key, '#e', '')
    redis.call('PERSIST', key)
  else
    redis.call('HSET', key, '#e', string.format('%.6f', target))
    redis.call('PEXPIRE', key, math.ceil((target - now) * 1000) + grace)
  end
  if index then redis.call('ZADD', index, target == math.huge and '+inf' or target, id) end
  local principal = meta[6]
  if principal and principal ~= '' then keep_principal(prefix .. principal, key) end
  if target == math.huge then return '' end
  return string.format('%.6f', target)
end
local function unindex(key, prefix, id)
  local principal = redis.call('HGET', key, '#p')
  if principal and principal ~= '' then redis.call('SREM', prefix .. principal, id) end
end
local META = {'#c', '#l', '#e', '#i', '#a', '#p'}
"""

# KEYS: hash. ARGV: now, period, grace, prefix, mode (0 read, 1 access, 2 activity), attributes?
LOAD = (
    PRELUDE
    + """
local key = KEYS[1]
local meta = redis.call('HMGET', key, unpack(META))
if not meta[1] then return false end
local now = tonumber(ARGV[1])
for i = 1, 6 do meta[i] = meta[i] or '' end
local result = {meta[1], meta[2], meta[3], meta[4], meta[5], meta[6]}
if ARGV[5] ~= '0' and deadline_of(meta) > now then
  if ARGV[5] == '1' then redis.call('HSET', key, '#l', ARGV[1]) end
  local target = next_deadline(meta, now, tonumber(ARGV[2]), false)
  if target then
    result[3] = write_deadline(key, meta, target, now, tonumber(ARGV[3]), ARGV[4], nil, nil)
  end
end
if ARGV[6] == '1' then
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'a:' then
      result[#result + 1] = string.sub(all[i], 3)
      result[#result + 1] = all[i + 1]
    end
  end
end
return result
"""
)

# KEYS: hash, index. ARGV: now, grace, prefix, id, creation, last, expires, interval, absolute,
# principal, then name/value pairs.
CREATE = (
    PRELUDE
    + """
local key = KEYS[1]
redis.call('HSET', key, '#c', ARGV[5], '#l', ARGV[6], '#i', ARGV[8], '#a', ARGV[9],
           '#p', ARGV[10])
for i = 11, #ARGV, 2 do redis.call('HSET', key, 'a:' .. ARGV[i], ARGV[i + 1]) end
local target = math.huge
if ARGV[7] ~= '' then target = tonumber(ARGV[7]) end
if ARGV[10] ~= '' then redis.call('SADD', ARGV[3] .. ARGV[10], ARGV[4]) end
local meta = {ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]}
write_deadline(key, meta, target, tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], KEYS[2], ARGV[4])
return 1
"""
)

# KEYS: hash, index, lock. ARGV: now, period, grace, prefix, id, lock token, principal changed,
# principal, timeouts changed, interval, absolute, n written, name/value pairs, removed names.
SAVE = (
    PRELUDE
    + """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return false end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then return -1 end
if ARGV[7] == '1' then
  local old = redis.call('HGET', key, '#p') or ''
  if old ~= ARGV[8] then
    if old ~= '' then redis.call('SREM', ARGV[4] .. old, ARGV[5]) end
    if ARGV[8] ~= '' then redis.call('SADD', ARGV[4] .. ARGV[8], ARGV[5]) end
    redis.call('HSET', key, '#p', ARGV[8])
  end
end
if ARGV[9] == '1' then redis.call('HSET', key, '#i', ARGV[10], '#a', ARGV[11]) end
local n = tonumber(ARGV[12])
for i = 13, 12 + 2 * n, 2 do redis.call('HSET', key, 'a:' .. ARGV[i], ARGV[i + 1]) end
for i = 13 + 2 * n, #ARGV do redis.call('HDEL', key, 'a:' .. ARGV[i]) end
local meta = redis.call('HMGET', key, unpack(META))
for i = 1, 6 do meta[i] = meta[i] or '' end
local now = tonumber(ARGV[1])
local force = ARGV[9] == '1' or ARGV[7] == '1'
local target = next_deadline(meta, now, tonumber(ARGV[2]), force)
if target then
  return write_deadline(key, meta, target, now, tonumber(ARGV[3]), ARGV[4],
                        ARGV[9] == '1' and KEYS[2] or nil, ARGV[5])
end
return meta[3]
"""
)

# KEYS: hash, index, lock. ARGV: id, prefix.
DELETE = (
    PRELUDE
    + """
unindex(KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return redis.call('DEL', KEYS[1])
"""
)

# KEYS: old hash, new hash, index, old lock, new lock. ARGV: old id, new id, prefix.
RENAME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local principal = redis.call('HGET', KEYS[1], '#p')
if principal and principal ~= '' then
  redis.call('SREM', ARGV[3] .. principal, ARGV[1])
  redis.call('SADD', ARGV[3] .. principal, ARGV[2])
end
redis.call('RENAME', KEYS[1], KEYS[2])
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if score then redis.call('ZADD', KEYS[3], score, ARGV[2]) end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[5]) end
return 1
"""

# Claim one due session: the DEL decides who fires session_destroyed (exactly one caller).
# KEYS: hash, index, lock. ARGV: now, id, prefix, re-file (1: put a not-due entry back).
CLAIM = (
    PRELUDE
    + """
local expires = redis.call('HGET', KEYS[1], '#e')
if not expires then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return false
end
if expires == '' or tonumber(expires) > tonumber(ARGV[1]) then
  if ARGV[4] == '1' then
    redis.call('ZADD', KEYS[2], expires == '' and '+inf' or expires, ARGV[2])
  end
  return false
end
local data = redis.call('HGETALL', KEYS[1])
unindex(KEYS[1], ARGV[3], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[2])
return data
"""
)

# KEYS: hash, lock. ARGV: token, lease ms. 2: no such session, 1: taken, 0: held by another.
LOCK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
