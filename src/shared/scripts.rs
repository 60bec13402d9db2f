//! The Lua scripts Redis runs for the fleet. Each touches one Redis key (one
//! hash slot) and reads the time from Redis (`TIME`), so replicas whose clocks
//! disagree still agree on blocks and spacing. Times are epoch milliseconds;
//! the limiter's arrival time is kept in Redis' clock and handed to replicas as
//! "milliseconds ahead of now", never as an instant of another clock.

use std::sync::LazyLock;

use redis::Script;

/// Redis' now (epoch ms) and the quota day by it: `date` (yyyymmdd in `TIMEZONE`, whose
/// offset at the replica's now is ARGV[1]) and `day_end`. Every hash with a daily count
/// starts with it.
const DAY_PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local off = tonumber(ARGV[1])
local days = math.floor((now + off) / 86400000)
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 10000 + m * 100 + d
end
local date, day_end = civil(days), (days + 1) * 86400000 - off
";

/// Account hash fields: `day` (yyyymmdd in `TIMEZONE` by Redis' clock), `u:<replica>` (the
/// units each replica sent in the window: the shared count is their sum, so every replica
/// writes only its own absolute number and a repeated or late write cannot count twice),
/// `o:<replica>` (what that replica last heard the others had sent: after Redis lost its
/// data, `o + u` of the first replica back stands for the others until they are back too;
/// never more than the truth, so never more than the sum once all are),
/// `floor` (what OpenRouter itself said the count is at least), `b`/`br` (block of every
/// request: until, reason), `fb`/`fbr` (free-model block), `tat` (GCRA arrival time),
/// `wend` (OpenRouter's reset instant of the count's window), `x:<replica>:<pick>` (a
/// fence: that replica stopped waiting for that pick's answer and counted it itself if it
/// sent it, so the pick's script, should it run late, counts nothing).
///
/// Nothing read back is trusted: a value that is not a number in bounds (an instant more
/// than 25 h ahead, a limiter arrival more than a minute and a burst ahead, a day after
/// Redis' today, a count that is not a whole number) is repaired and the caller told.
/// ARGV (every account script): the `TIMEZONE` offset at the replica's now (ms), the
/// daily limit, the limiter's interval and burst tolerance (ms), the replica's name.
const ACCOUNT_PRELUDE: &str = r"
local limit, interval, tolerance = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local mine_field = 'u:' .. ARGV[5]
local far, tat_max = now + 90000000, now + 60000 + tolerance + interval
local repaired = 0
local function bounded(v, hi)
  if v == nil then return 0 end
  local n = tonumber(v)
  if n == nil or n ~= n or n < 0 or n > hi then repaired = 1; return 0 end
  return math.floor(n)
end
local h = redis.pcall('HGETALL', KEYS[1])
if type(h) ~= 'table' or h.err then redis.call('DEL', KEYS[1]); h = {}; repaired = 1 end
local f, counts, heard, fences = {}, {}, {}, {}
for i = 1, #h, 2 do
  local kind = string.sub(h[i], 1, 2)
  if kind == 'u:' then counts[h[i]] = h[i + 1]
  elseif kind == 'o:' then heard[string.sub(h[i], 3)] = h[i + 1]
  elseif kind == 'x:' then fences[h[i]] = true
  else f[h[i]] = h[i + 1] end
end
local day = bounded(f.day, 99991231)
if day > date then repaired = 1 end
local wend, b, fb = bounded(f.wend, far), bounded(f.b, far), bounded(f.fb, far)
local br, fbr = bounded(f.br, 255), bounded(f.fbr, 255)
local tat = bounded(f.tat, tat_max)
local floor = math.min(bounded(f.floor, 4294967295), limit)
if f.used then
  -- Written by an older version: its count becomes the floor of this window.
  floor = math.max(floor, math.min(bounded(f.used, 4294967295), limit))
  redis.call('HDEL', KEYS[1], 'used')
end
local fresh = day ~= date or (wend > 0 and now >= wend)
if wend > 0 and now >= wend then wend = 0 end
if fresh then
  floor = 0
  for name in pairs(fences) do redis.call('HDEL', KEYS[1], name) end
  fences = {}
end
local sum = 0
for name, v in pairs(counts) do
  local n = tonumber(v)
  if n == nil or n ~= n or n < 0 or n > 4294967295 or n ~= math.floor(n) then
    repaired = 1; n = nil
  end
  if fresh or n == nil then
    redis.call('HDEL', KEYS[1], name)
    n = 0
  end
  counts[name] = n
  sum = sum + math.min(n, limit)
end
local seen = 0
for replica, v in pairs(heard) do
  local n = tonumber(v)
  if fresh or n == nil or n ~= n or n < 0 or n > 4294967295 then
    if not fresh then repaired = 1 end
    redis.call('HDEL', KEYS[1], 'o:' .. replica)
    heard[replica] = nil
  else
    seen = math.max(seen, math.min(n, limit) + math.min(counts['u:' .. replica] or 0, limit))
  end
end
local function used() return math.max(floor, sum, seen) end
local own = counts[mine_field] or 0
-- What the calling replica reports for `their_date`: the units it sent (its own field is
-- set to the larger of Redis' and its number) and what it last heard the others had sent.
local function report(their_date, mine, others)
  if their_date ~= date then return end
  mine = math.min(mine, 4294967295)
  if mine > own then
    redis.call('HSET', KEYS[1], mine_field, mine)
    sum = sum + math.min(mine, limit) - math.min(own, limit)
    own = mine
  end
  local had = tonumber(heard[ARGV[5]] or -1)
  if others > had then
    redis.call('HSET', KEYS[1], 'o:' .. ARGV[5], math.min(others, limit))
    had = others
  end
  seen = math.max(seen, math.min(math.max(had, 0), limit) + math.min(own, limit))
end
local function keep()
  redis.call('HSET', KEYS[1], 'day', date, 'floor', floor, 'b', b, 'br', br, 'fb', fb, 'fbr', fbr,
    'tat', tat, 'wend', wend)
  redis.call('PEXPIREAT', KEYS[1], math.max(day_end, b, fb, wend, tat) + 3600000)
end
if fresh or repaired == 1 then keep() end
";

/// Confirms one free-model pick for the fleet, and with a second key, counts its request
/// for the client whose hash that is (one round trip for both). ARGV: the prelude's, then
/// the replica's date, the units it sent in the window and what it last heard the others
/// had sent (-1 each when its window may have ended for Redis): so a Redis that lost its
/// data knows at least what this replica knows before it decides; then the pick's number;
/// with a client, its own requests and free requests of the date, its daily request and
/// free-request limits (-1: none), its limiter's interval and tolerance (ms). Returns `{0}`
/// (taken: one unit counted as this replica's and one slot, and the client's request),
/// `{1, wait, reason}` (blocked), `{2, wait}` (quota used up), `{3, wait}` (throttled),
/// `{4}` (fenced: the replica stopped waiting, nothing is taken), or the client's refusal
/// (`admit_client`; the account takes nothing).
pub static PICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DAY_PRELUDE}{ACCOUNT_PRELUDE}{CLIENT_FUNCTIONS}
local fence = 'x:' .. ARGV[5] .. ':' .. ARGV[9]
if fences[fence] then
  redis.call('HDEL', KEYS[1], fence)
  return {{4}}
end
report(tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
if b > now then return {{1, b - now, br}} end
if fb > now then return {{1, fb - now, fbr}} end
if used() >= limit then
  local reset = day_end
  if wend > 0 then reset = wend end
  return {{2, math.max(reset - now, 0)}}
end
local next_tat = math.max(tat, now)
if next_tat - now > tolerance then return {{3, next_tat - tolerance - now}} end
if KEYS[2] then
  local c = open_client(KEYS[2], ARGV[5], tonumber(ARGV[6]), ARGV[10], ARGV[11])
  local refused = admit_client(c, tonumber(ARGV[12]), tonumber(ARGV[13]), true,
    tonumber(ARGV[14]), tonumber(ARGV[15]))
  if refused then return refused end
end
tat = next_tat + interval
redis.call('HINCRBY', KEYS[1], mine_field, 1)
keep()
return {{0}}"
    ))
});

/// Gives back a unit and a slot confirmed by [`PICK`] whose attempt never reached
/// OpenRouter. ARGV: the replica's date, interval ms, the replica's name.
pub static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local field = 'u:' .. ARGV[3]
local h = redis.call('HMGET', KEYS[1], 'day', field, 'tat')
if tonumber(h[1]) == tonumber(ARGV[1]) and (tonumber(h[2]) or 0) >= 1 then
  redis.call('HINCRBY', KEYS[1], field, -1)
end
if tonumber(h[3]) then redis.call('HSET', KEYS[1], 'tat', tonumber(h[3]) - tonumber(ARGV[2])) end
return 1",
    )
});

/// Merges one replica's view of an account into the shared one and returns the result.
/// ARGV: the prelude's, then the replica's date, the units it sent in the window (-1 when
/// its window may have ended for Redis), OpenRouter's floor, its window end (0 if none), b,
/// br, fb, fbr, its limiter's ms ahead of now, what it last heard the others had sent (-1
/// when its window may have ended). Its own count is set to the larger of
/// Redis' and its own (a pick that timed out in Redis but ran is not counted twice); the
/// floor, blocks and the window end: the larger (later) wins; the limiter: the later
/// arrival wins; then the numbers of the picks it stopped waiting for, fenced. Returns
/// `{day, used, b, br, fb, fbr, tat ahead of now, wend, this replica's count, 1 if
/// something was repaired}`.
pub static SYNC_ACCOUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DAY_PRELUDE}{ACCOUNT_PRELUDE}
for i = 16, #ARGV do redis.call('HSET', KEYS[1], 'x:' .. ARGV[5] .. ':' .. ARGV[i], 1) end
local theirs = tonumber(ARGV[9])
if theirs > now and theirs <= far and theirs > wend then wend = theirs end
report(tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[15]))
if tonumber(ARGV[6]) == date then floor = math.max(floor, math.min(tonumber(ARGV[8]), limit)) end
if tonumber(ARGV[10]) > b and tonumber(ARGV[10]) <= far then b = tonumber(ARGV[10]); br = tonumber(ARGV[11]) end
if tonumber(ARGV[12]) > fb and tonumber(ARGV[12]) <= far then fb = tonumber(ARGV[12]); fbr = tonumber(ARGV[13]) end
tat = math.max(tat, now + math.min(tonumber(ARGV[14]), tat_max - now))
keep()
return {{date, used(), b, br, fb, fbr, math.max(tat - now, 0), wend, own, repaired}}"
    ))
});

/// Merges one replica's view of a key. ARGV: 5 total deltas (requests, successes,
/// rate_limited, errors, unreached), the same 5 in full (used when the hash is new, so a
/// Redis that restarted empty is filled again, or a total is not a number), last used, b,
/// br, user id ("" if unknown). Returns `{5 totals, last, b, br, user, probe at, probe}`.
/// A hash of the wrong type is replaced; the replica bounds what it reads back.
pub static SYNC_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = {'req', 'ok', 'rl', 'err', 'unr'}
local kind = redis.call('TYPE', KEYS[1])
if type(kind) == 'table' then kind = kind.ok end
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local out = {}
for i = 1, 5 do
  local n = not fresh and redis.pcall('HINCRBY', KEYS[1], f[i], ARGV[i])
  if type(n) ~= 'number' then
    redis.call('HSET', KEYS[1], f[i], ARGV[5 + i])
    n = tonumber(ARGV[5 + i])
  end
  out[i] = n
end
local h = redis.call('HMGET', KEYS[1], 'last', 'b', 'br', 'user', 'pat', 'probe')
local last = math.max(tonumber(h[1]) or 0, tonumber(ARGV[11]))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b, br = tonumber(h[2]) or 0, tonumber(h[3]) or 0
if b ~= b or b > now + 90000000 then b = 0 end
if last ~= last or last > now + 90000000 then last = tonumber(ARGV[11]) end
if tonumber(ARGV[12]) > b then b = tonumber(ARGV[12]); br = tonumber(ARGV[13]) end
local user = h[4] or ''
if user == '' then user = ARGV[14] end
redis.call('HSET', KEYS[1], 'last', last, 'b', b, 'br', br, 'user', user)
redis.call('PEXPIRE', KEYS[1], 2592000000)
out[6], out[7], out[8], out[9] = last, b, br, user
out[10], out[11] = tonumber(h[5]) or 0, h[6] or ''
return out",
    )
});

/// How long a replica stays in the fleet's count after its last heartbeat.
pub const HEARTBEAT_WINDOW_MS: i64 = 3_000;

/// Keeps this replica in the fleet for [`HEARTBEAT_WINDOW_MS`] and returns the fleet's size.
/// ARGV: replica id.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - {HEARTBEAT_WINDOW_MS})
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('ZCARD', KEYS[1])"
    ))
});

/// Shares a probe's result. ARGV: when (ms), the encoded result.
pub static PROBED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local at = tonumber(redis.call('HGET', KEYS[1], 'pat') or '0')
if tonumber(ARGV[1]) > at then
  redis.call('HSET', KEYS[1], 'pat', ARGV[1], 'probe', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], 2592000000)
end
return 1",
    )
});

/// Client hash fields: `day` (as for accounts), `r:<replica>`, `f:<replica>` (the requests
/// and free-model requests each replica admitted today: absolute, as for accounts), `p:`,
/// `q:`, `c:<replica>` (today's prompt tokens, completion tokens and nano-USD through each
/// replica), `tat` (the per-minute limiter's arrival time) and fences
/// `x:<replica>:<admission>` as for accounts. A value that is not a whole number in bounds
/// is dropped. Two functions, after [`DAY_PRELUDE`]: `open_client(key, replica, their date,
/// own requests, own free requests)` reads a client's hash and reports the replica's own
/// counts; `admit_client(c, limit, free limit, free, interval, tolerance)` counts one
/// request as the replica's, or returns why not: `{5, 1}` (daily request limit), `{5, 2}`
/// (daily free-request limit), `{6, wait}` (per-minute limit). Limits of -1: none.
const CLIENT_FUNCTIONS: &str = r"
local function open_client(key, me, their_date, mine_r, mine_f)
  local c = {key = key, me = me, tat = 0, fences = {},
    all = {r = 0, f = 0, p = 0, q = 0, c = 0}, own = {r = 0, f = 0, p = 0, q = 0, c = 0}}
  local h = redis.pcall('HGETALL', key)
  if type(h) ~= 'table' or h.err then redis.call('DEL', key); h = {} end
  local day, fields = 0, {}
  for i = 1, #h, 2 do
    local name, v = h[i], tonumber(h[i + 1])
    if name == 'day' then day = v or 0
    elseif name == 'tat' then c.tat = v or 0
    elseif string.sub(name, 1, 2) == 'x:' then c.fences[name] = true
    elseif c.all[string.sub(name, 1, 1)] and string.sub(name, 2, 2) == ':' then fields[name] = v end
  end
  if c.tat ~= c.tat or c.tat > now + 86400000 then c.tat = 0 end
  local fresh = day ~= date
  for name, v in pairs(fields) do
    if fresh or v == nil or v ~= v or v < 0 or v > 9e15 or v ~= math.floor(v) then
      redis.call('HDEL', key, name)
    else
      local kind = string.sub(name, 1, 1)
      c.all[kind] = c.all[kind] + v
      if string.sub(name, 3) == me then c.own[kind] = v end
    end
  end
  if fresh then
    for name in pairs(c.fences) do redis.call('HDEL', key, name) end
    c.fences = {}
  end
  -- What the replica has of `kind` on its date: its own field is set to the larger.
  function c.report(kind, mine)
    mine = tonumber(mine)
    if their_date ~= date or mine <= c.own[kind] then return end
    redis.call('HSET', key, kind .. ':' .. me, mine)
    c.all[kind] = c.all[kind] + mine - c.own[kind]
    c.own[kind] = mine
  end
  function c.keep()
    redis.call('HSET', key, 'day', date, 'tat', c.tat)
    redis.call('PEXPIREAT', key, math.max(day_end, c.tat) + 3600000)
  end
  c.report('r', mine_r)
  c.report('f', mine_f)
  c.keep()
  return c
end
local function admit_client(c, limit, free_limit, free, interval, tolerance)
  if limit >= 0 and c.all.r >= limit then return {5, 1} end
  if free and free_limit >= 0 and c.all.f >= free_limit then return {5, 2} end
  if interval > 0 then
    local tat = math.max(c.tat, now)
    if tat - now > tolerance then return {6, tat - tolerance - now} end
    c.tat = tat + interval
    c.keep()
  end
  redis.call('HINCRBY', c.key, 'r:' .. c.me, 1)
  if free then redis.call('HINCRBY', c.key, 'f:' .. c.me, 1) end
  return nil
end
";

/// Admits one request of a client with a shared limit (a paid-model one, or any while the
/// fleet's picks are not confirmed in Redis). ARGV: the `TIMEZONE` offset (ms), the
/// replica's name, its date, its own requests and free requests of that date, the daily
/// request limit and free-request limit (-1: none), 1 if for free models, the per-minute
/// limiter's interval and burst tolerance (ms; 0 interval: none), the admission's number.
/// Returns `{0}` (counted as this replica's), `{4}` (fenced) or `admit_client`'s refusal.
pub static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DAY_PRELUDE}{CLIENT_FUNCTIONS}
local c = open_client(KEYS[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5])
local fence = 'x:' .. ARGV[2] .. ':' .. ARGV[11]
if c.fences[fence] then
  redis.call('HDEL', KEYS[1], fence)
  return {{4}}
end
local refused = admit_client(c, tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1',
  tonumber(ARGV[9]), tonumber(ARGV[10]))
return refused or {{0}}"
    ))
});

/// Gives back a request [`ADMIT`] counted that never reached OpenRouter. ARGV: the
/// replica's date, its name, 1 if it was a free-model request.
pub static GIVE_BACK_CLIENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local kinds = ARGV[3] == '1' and {'r', 'f'} or {'r'}
if tonumber(redis.call('HGET', KEYS[1], 'day')) ~= tonumber(ARGV[1]) then return 0 end
for _, kind in ipairs(kinds) do
  local field = kind .. ':' .. ARGV[2]
  if (tonumber(redis.call('HGET', KEYS[1], field)) or 0) >= 1 then
    redis.call('HINCRBY', KEYS[1], field, -1)
  end
end
return 1",
    )
});

/// Merges one replica's counts of a client. ARGV: offset, replica, date, own requests and
/// free requests (as for [`ADMIT`]), then its own prompt tokens, completion tokens and
/// nano-USD of its date, then the admissions it stopped waiting for, fenced. Returns
/// `{date, own requests, own free requests, the others' requests, free requests, prompt
/// tokens, completion tokens, nano-USD}`.
pub static SYNC_CLIENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{DAY_PRELUDE}{CLIENT_FUNCTIONS}
local c = open_client(KEYS[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5])
c.report('p', ARGV[6])
c.report('q', ARGV[7])
c.report('c', ARGV[8])
for i = 9, #ARGV do redis.call('HSET', KEYS[1], 'x:' .. ARGV[2] .. ':' .. ARGV[i], 1) end
local all, own = c.all, c.own
return {{date, own.r, own.f, all.r - own.r, all.f - own.f, all.p - own.p, all.q - own.q, all.c - own.c}}"
    ))
});

/// Every script, for loading them again after Redis lost them (`NOSCRIPT`).
pub fn all() -> [&'static Script; 9] {
    [
        &PICK,
        &ADMIT,
        &GIVE_BACK_CLIENT,
        &SYNC_CLIENT,
        &GIVE_BACK,
        &SYNC_ACCOUNT,
        &SYNC_KEY,
        &HEARTBEAT,
        &PROBED,
    ]
}
