"""The Lua scripts of :mod:`.claims`: each is one atomic round trip to Redis.

A claim's key holds the owner's token (``NODE:HEX``) while it is held and ``done:`` and that
token once it is finished, so a daemon can tell a call it finished itself (``journal retry``
sends its record again) from one another daemon finished. A bare ``done`` (written by an
older version) is finished too.
"""

# KEYS: the claim, the set of users its owners notified. Won: {0, the users} (a previous
# owner died or gave the call up after notifying them); else {1} held or {2, the marker}
# finished.
CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {0, unpack(redis.call('SMEMBERS', KEYS[2]))}
end
if string.sub(value, 1, 4) == 'done' then return {2, value} end
return {1}
"""

# KEYS: the held claims (ARGV[2] of them; their tokens from ARGV[3]), then the watched ones.
# A held claim: 1 renewed, 0 lost. A watched one: 0 free, 1 held, 2 finished.
TICK = """
local held = tonumber(ARGV[2])
local states = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if i <= held then
    if value == ARGV[i + 2] then
      redis.call('PEXPIRE', key, ARGV[1])
      states[i] = 1
    else
      states[i] = 0
    end
  elseif not value then
    states[i] = 0
  elseif string.sub(value, 1, 4) == 'done' then
    states[i] = 2
  else
    states[i] = 1
  end
end
return states
"""

RECORD = """
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""

FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done:' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
