//! The Lua scripts Redis runs for the fleet. Each touches one Redis key (one
//! hash slot) and reads the time from Redis (`TIME`), so replicas whose clocks
//! disagree still agree on blocks and spacing. Times are epoch milliseconds;
//! the limiter's arrival time is kept in Redis' clock and handed to replicas as
//! "milliseconds ahead of now", never as an instant of another clock.

use std::sync::LazyLock;

use redis::Script;

/// Account hash fields: `day` (yyyymmdd), `used`, `b`/`br` (block of every request: until,
/// reason), `fb`/`fbr` (free-model block), `tat` (GCRA arrival time), `wend` (OpenRouter's
/// reset instant of the count's window).
const ACCOUNT_PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'day', 'used', 'b', 'br', 'fb', 'fbr', 'tat', 'wend')
local day, used = tonumber(h[1]) or 0, tonumber(h[2]) or 0
local b, br = tonumber(h[3]) or 0, tonumber(h[4]) or 0
local fb, fbr = tonumber(h[5]) or 0, tonumber(h[6]) or 0
local tat, wend = tonumber(h[7]) or 0, tonumber(h[8]) or 0
local date = tonumber(ARGV[1])
if wend > 0 and now >= wend then used = 0; wend = 0 end
if day > date then date = day elseif day < date then used = 0 end
local function keep(day_end)
  redis.call('HSET', KEYS[1], 'day', date, 'used', used, 'b', b, 'br', br, 'fb', fb, 'fbr', fbr,
    'tat', tat, 'wend', wend)
  redis.call('PEXPIREAT', KEYS[1], math.max(day_end, b, fb, wend, tat) + 3600000)
end
";

/// Confirms one free-model pick for the fleet. ARGV: date, limit, interval ms, burst
/// tolerance ms, end of the quota day (ms). Returns `{0}` (taken: one unit and one slot),
/// `{1, wait, reason}` (blocked), `{2, wait}` (quota used up), `{3, wait}` (throttled).
pub static PICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{ACCOUNT_PRELUDE}
if b > now then return {{1, b - now, br}} end
if fb > now then return {{1, fb - now, fbr}} end
local day_end = tonumber(ARGV[5])
if used >= tonumber(ARGV[2]) then
  local reset = day_end
  if wend > 0 then reset = wend end
  return {{2, math.max(reset - now, 0)}}
end
local interval, tolerance = tonumber(ARGV[3]), tonumber(ARGV[4])
tat = math.max(tat, now)
if tat - now > tolerance then return {{3, tat - tolerance - now}} end
used = used + 1
tat = tat + interval
keep(day_end)
return {{0}}"
    ))
});

/// Gives back a unit and a slot confirmed by [`PICK`] whose attempt never reached
/// OpenRouter. ARGV: date, interval ms.
pub static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('HMGET', KEYS[1], 'day', 'used', 'tat')
if tonumber(h[1]) == tonumber(ARGV[1]) and (tonumber(h[2]) or 0) > 0 then
  redis.call('HINCRBY', KEYS[1], 'used', -1)
end
if h[3] then redis.call('HSET', KEYS[1], 'tat', tonumber(h[3]) - tonumber(ARGV[2])) end
return 1",
    )
});

/// Merges one replica's view of an account into the shared one and returns the result.
/// ARGV: date, floor (the replica's count for the date, 0 when it may be stale), picks it
/// counted alone, b, br, fb, fbr, its limiter's ms ahead of now, its window end (0 if
/// none), end of the quota day. Counts: the larger of both plus what it counted alone;
/// blocks and the window end: the later wins; the limiter: the later arrival wins.
/// Returns `{day, used, b, br, fb, fbr, tat ahead of now, wend}`.
pub static SYNC_ACCOUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{ACCOUNT_PRELUDE}
local theirs = tonumber(ARGV[9])
if theirs > wend then wend = theirs end
if tonumber(ARGV[1]) == date then used = math.max(used, tonumber(ARGV[2])) + tonumber(ARGV[3]) end
if tonumber(ARGV[4]) > b then b = tonumber(ARGV[4]); br = tonumber(ARGV[5]) end
if tonumber(ARGV[6]) > fb then fb = tonumber(ARGV[6]); fbr = tonumber(ARGV[7]) end
tat = math.max(tat, now + tonumber(ARGV[8]))
keep(tonumber(ARGV[10]))
return {{date, used, b, br, fb, fbr, math.max(tat - now, 0), wend}}"
    ))
});

/// Merges one replica's view of a key. ARGV: 5 total deltas (requests, successes,
/// rate_limited, errors, unreached), the same 5 in full (used when the hash is new, so a
/// Redis that restarted empty is filled again), last used, b, br, user id ("" if unknown).
/// Returns `{5 totals, last, b, br, user, probe at, probe}`.
pub static SYNC_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local f = {'req', 'ok', 'rl', 'err', 'unr'}
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local out = {}
for i = 1, 5 do
  if fresh then
    redis.call('HSET', KEYS[1], f[i], ARGV[5 + i])
    out[i] = tonumber(ARGV[5 + i])
  else
    out[i] = redis.call('HINCRBY', KEYS[1], f[i], ARGV[i])
  end
end
local h = redis.call('HMGET', KEYS[1], 'last', 'b', 'br', 'user', 'pat', 'probe')
local last = math.max(tonumber(h[1]) or 0, tonumber(ARGV[11]))
local b, br = tonumber(h[2]) or 0, tonumber(h[3]) or 0
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

/// Keeps this replica in the fleet for 3 s and returns the fleet's size. ARGV: replica id.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3000)
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('ZCARD', KEYS[1])",
    )
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

/// Every script, for loading them again after Redis lost them (`NOSCRIPT`).
pub fn all() -> [&'static Script; 6] {
    [
        &PICK,
        &GIVE_BACK,
        &SYNC_ACCOUNT,
        &SYNC_KEY,
        &HEARTBEAT,
        &PROBED,
    ]
}
