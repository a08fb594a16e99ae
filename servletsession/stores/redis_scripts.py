"""The Lua scripts behind ``RedisStore``: each operation is one script, atomic and one round trip.

Every key a script touches is in one hash slot: the session's hash, its lock, its shard's deadline
index and its shard's principal sets share the shard's hash tag (see ``redis_layout``). A key name
built inside a script (a principal set) is therefore local too, on a single node and on a cluster.

The deadline rule is the one `SharedStore` states: rewrite a
deadline only once it has fallen below ``now + interval``, then to ``now + interval + pad``.

A session being moved to another slot by an ID change carries ``#m`` (its new ID) and ``#t`` (the
move's lease): it is read but not written, locked or claimed until the move ends (``MOVE_*``).
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
# Returns the six metadata fields, the move's target ID and lease ('' when not moving), then
# name/value pairs. A moving session is returned as it is, and not written.
LOAD = (
    PRELUDE
    + """
local key = KEYS[1]
local meta = redis.call('HMGET', key, '#c', '#l', '#e', '#i', '#a', '#p', '#m', '#t')
if not meta[1] then return false end
local now = tonumber(ARGV[1])
for i = 1, 8 do meta[i] = meta[i] or '' end
local result = {meta[1], meta[2], meta[3], meta[4], meta[5], meta[6], meta[7], meta[8]}
if ARGV[5] ~= '0' and meta[7] == '' and deadline_of(meta) > now then
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
local moving = redis.call('HGET', key, '#m')
if moving then return {'#m', moving} end
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
local moving = redis.call('HGET', KEYS[1], '#m')
if moving then return {'#m', moving} end
unindex(KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return redis.call('DEL', KEYS[1])
"""
)

# Both IDs in one slot. KEYS: old hash, new hash, index, old lock, new lock. ARGV: old id, new id,
# prefix. 1: renamed; 0: no such session; {'#m', target}: a move to another slot marked it.
RENAME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local moving = redis.call('HGET', KEYS[1], '#m')
if moving then return {'#m', moving} end
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

# Claim one due session: the DEL decides who fires session_destroyed (exactly one caller). A
# moving session is not claimed: {'#m', its new ID} says so.
# KEYS: hash, index, lock. ARGV: now, id, prefix, re-file (1: put a not-due entry back).
CLAIM = (
    PRELUDE
    + """
local expires = redis.call('HGET', KEYS[1], '#e')
if not expires then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return false
end
local moving = redis.call('HGET', KEYS[1], '#m')
if moving then return {'#m', moving} end
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

# KEYS: hash, lock. ARGV: token, lease ms. 2: no such session (or it is moving: the request reads
# it and finds where it went), 1: taken, 0: held by another.
LOCK = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], '#m') == 1 then
  return 2
end
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

# --- an ID change across slots: out of the old slot, into the new one, then the old is gone -----
# The move commits when MOVE_IN writes the new hash: before, the old ID is the session; after,
# the new one (a reader of a moving old ID asks whether the new hash exists). No moment has both
# or neither. The move's lease is in the servers' time (TIME): MOVE_IN refuses once it is within
# ARGV[1] seconds of running out, and MOVE_ABORT takes the mark off only after it ran out, so an
# abandoned move can never commit after it was aborted.

NOW = """
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: old hash, old lock. ARGV: new id, lease seconds. Returns false if the session is gone,
# {'#m', target, lease} if another move marked it, else: hash PTTL, lock value, lock PTTL,
# lease, then the hash's field/values. Idempotent: redis-py may send a call again after a lost
# connection, and the second run must answer as the first did.
MOVE_OUT = (
    NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local moving = redis.call('HMGET', KEYS[1], '#m', '#t')
local lease = moving[2]
if moving[1] and moving[1] ~= ARGV[1] then return {'#m', moving[1], moving[2]} end
if not moving[1] then  -- (marked for this very move: a retried call gets the same answer)
  lease = string.format('%.6f', server_now() + tonumber(ARGV[2]))
  redis.call('HSET', KEYS[1], '#m', ARGV[1], '#t', lease)
end
local result = {redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or '',
                redis.call('PTTL', KEYS[2]), lease}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= '#m' and all[i] ~= '#t' then
    result[#result + 1] = all[i]
    result[#result + 1] = all[i + 1]
  end
end
return result
"""
)

# KEYS: new hash, new index, new lock, commit record. ARGV: commit-by (server time), unused, new id,
# prefix, hash PTTL, lock value, lock PTTL, deadline ('' for none), principal, old id, commit
# record PTTL (0: none), then field/value pairs. The commit record (in the new slot, naming the
# old ID) outlives the old hash: whoever meets the old hash later knows the move committed even
# after the new session has ended. 1: moved in (or it was, by this very move: idempotent); 0: too
# late (past commit-by: the requester has given up, or the lease is about to run out) or the new
# ID is taken.
MOVE_IN = (
    PRELUDE
    + NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('GET', KEYS[4]) == ARGV[10] then return 1 end
  return 0
end
if server_now() > tonumber(ARGV[1]) then return 0 end
for i = 12, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if tonumber(ARGV[11]) > 0 then
  redis.call('SET', KEYS[4], ARGV[10], 'PX', ARGV[11])
else
  redis.call('SET', KEYS[4], ARGV[10])
end
local ttl = tonumber(ARGV[5])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('ZADD', KEYS[2], ARGV[8] == '' and '+inf' or ARGV[8], ARGV[3])
if ARGV[9] ~= '' then
  redis.call('SADD', ARGV[4] .. ARGV[9], ARGV[3])
  keep_principal(ARGV[4] .. ARGV[9], KEYS[1])
end
if ARGV[6] ~= '' and tonumber(ARGV[7]) > 0 then
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
end
return 1
"""
)

# KEYS: old hash, old index, old lock. ARGV: old id, new id, prefix. The move committed: the old
# hash goes, with its index entries (only if it is still marked for this move).
MOVE_DONE = (
    PRELUDE
    + """
if redis.call('HGET', KEYS[1], '#m') ~= ARGV[2] then return 0 end
unindex(KEYS[1], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return redis.call('DEL', KEYS[1])
"""
)

# KEYS: old hash. ARGV: new id, '1' to take the mark off (else only look). Returns 'gone' (no old
# hash), 'clear' (not marked for this move), 'runs' (its lease still runs), 'over' (it ran out;
# taken off if asked).
MOVE_ABORT = (
    NOW
    + """
local moving = redis.call('HMGET', KEYS[1], '#m', '#t')
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
if moving[1] ~= ARGV[1] then return 'clear' end
if server_now() <= tonumber(moving[2]) then return 'runs' end
if ARGV[2] == '1' then redis.call('HDEL', KEYS[1], '#m', '#t') end
return 'over'
"""
)

# One shard's sessions of a principal, read with their hashes in one step (no ID change of the
# shard can fall between the two reads); members whose hash is gone or bound to another
# principal leave the set. KEYS: the principal set. ARGV: the shard's session key head
# ('{prefix}{tag}:s:'), principal. Returns id, deadline, move target ('' for none), ...
PRINCIPAL_SESSIONS = """
local result = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local meta = redis.call('HMGET', ARGV[1] .. id, '#e', '#p', '#m')
  if meta[2] ~= ARGV[2] then
    redis.call('SREM', KEYS[1], id)
  else
    result[#result + 1] = id
    result[#result + 1] = meta[1] or ''
    result[#result + 1] = meta[3] or ''
  end
end
return result
"""
