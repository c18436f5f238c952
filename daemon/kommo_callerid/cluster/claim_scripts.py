"""The Lua scripts of :mod:`.claims`: each is one atomic round trip to Redis.

A claim's key holds the owner's token while it is held and ``done`` once it is finished.
"""

# KEYS: the claim, the set of users its owners notified. Won: {0, the users} (a previous
# owner died or gave the call up after notifying them); else {1} held or {2} finished.
CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {0, unpack(redis.call('SMEMBERS', KEYS[2]))}
end
if value == 'done' then return {2} end
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
  elseif value == 'done' then
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
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
