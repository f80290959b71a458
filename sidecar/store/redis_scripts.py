"""The Lua scripts of the Redis store.

Every script names each key it touches in ``KEYS`` and never builds a key name as it runs,
so Redis Cluster can route it: all of a script's keys hash to one slot. Where a record and
its index cannot share a slot (a session and its user's index, a link and its hash index),
the store writes them in separate steps ordered so that a failure in between leaves only
an index entry that readers check and ignore — never a record that an index misses.
Outside a cluster, where one node holds every key, ``CREATE_INDEXED_SESSION`` does a
session's three steps in one script, ``INDEX_AND_RECORD_MINT`` a mint's two, and
``SET_STATE_ONCE`` records the time too.
"""

from __future__ import annotations

# KEYS: token key[, token time key: outside a cluster only]. ARGV: state to set,
# expires_at (ms), min ttl (ms). Returns the old state; when there was none and a time key
# is given, also records there when (Redis' clock, epoch seconds) with the same expiry.
SET_STATE_ONCE = """
local t = redis.call('TIME')
local floor = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3])
local at = math.max(tonumber(ARGV[2]), floor)
local old = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', at, 'GET')
if not old and KEYS[2] then
  redis.call('SET', KEYS[2], string.format('%d.%06d', t[1], t[2]), 'NX', 'PXAT', at)
end
return old
"""

# KEYS: user (or link) index. ARGV: session key, expires_at (ms). The index lives until the last
# session's *absolute* expiry: touches push a session's own expiry forward, and the index
# must still find it then.
INDEX_SESSION = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
"""

# KEYS: session. ARGV: dead_at (ms), field, value, ...
CREATE_SESSION = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
"""

# Outside a cluster only (a node holds every key): INDEX_SESSION on both indexes and
# CREATE_SESSION in one call. KEYS: user index, link index, session.
# ARGV: expires_at (ms), dead_at (ms), field, value, ...
CREATE_INDEXED_SESSION = """
for i = 1, 2 do
  redis.call('SADD', KEYS[i], KEYS[3])
  if redis.call('PEXPIRETIME', KEYS[i]) < tonumber(ARGV[1]) then
    redis.call('PEXPIREAT', KEYS[i], ARGV[1])
  end
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
redis.call('PEXPIREAT', KEYS[3], ARGV[2])
"""

# KEYS: session. ARGV: last_seen. Never moves last_seen back, never revives a session.
TOUCH_SESSION = """
local v = redis.call('HMGET', KEYS[1], 'last_seen', 'expires_at', 'idle_timeout')
if not v[1] then return 0 end
local seen = tonumber(v[1])
if tonumber(ARGV[1]) > seen then
  seen = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
end
local dead = math.min(tonumber(v[2]), seen + tonumber(v[3]))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', math.ceil(dead * 1000)))
return 1
"""

# KEYS: session. Returns the user id it had, or false if there was none.
DELETE_SESSION = """
local u = redis.call('HGET', KEYS[1], 'user_id')
if u then redis.call('DEL', KEYS[1]) end
return u
"""

# KEYS: session. ARGV: user id. 1 deleted, 0 no such session, -1 it belongs to another
# user (the key was reused; the index entry is stale).
DELETE_SESSION_OF = """
local u = redis.call('HGET', KEYS[1], 'user_id')
if not u then return 0 end
if u ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: session. ARGV: token id. As DELETE_SESSION_OF, for the sessions one link created.
DELETE_SESSION_OF_LINK = """
local t = redis.call('HGET', KEYS[1], 'token_id')
if not t then return 0 end
if t ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: user, email index. ARGV: id, email_key, data. Returns 0 if id or email is taken.
CREATE_USER = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'email_key', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# KEYS: user, new email index, old email index. ARGV: id, email_key, data, old email_key
# as the caller read it. Returns -1 (no such user), -2 (the email changed since it was
# read: read again), 0 (email taken), 1 (updated).
UPDATE_USER = """
local old = redis.call('HGET', KEYS[1], 'email_key')
if not old then return -1 end
if old ~= ARGV[4] then return -2 end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
if old ~= ARGV[2] then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'email_key', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# KEYS: link. ARGV: expires_at (ms), field, value, ... Returns the replaced link's
# hashed_token (or false) so the caller can drop its index entry.
PUT_LINK = """
local old = redis.call('HGET', KEYS[1], 'hashed_token')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return old
"""

# KEYS: link. Returns the deleted link's hashed_token, or false.
DELETE_LINK = """
local old = redis.call('HGET', KEYS[1], 'hashed_token')
redis.call('DEL', KEYS[1])
return old
"""

# KEYS: hash index. ARGV: the link key it must still point at to be deleted.
DELETE_INDEX_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: link.
FAILED_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'failed_attempts', 1)
"""

# KEYS: counter. ARGV: window reset (ms).
HIT = """
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) end
return c
"""

# KEYS: a user's token index. ARGV: keep_until (ms), created_at, token id. The index lives
# as long as its longest-kept record; entries of expired records are dropped when read.
INDEX_MINT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
"""

# Outside a cluster only (a node holds every key): INDEX_MINT, then RECORD_MINT, in one
# call. KEYS: the user's token index, token record. ARGV: keep_until (ms), created_at,
# token id, field, value, ...
INDEX_AND_RECORD_MINT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[2], ARGV[1])
"""

# KEYS: token record. ARGV: keep_until (ms), field, value, ...
RECORD_MINT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
"""
