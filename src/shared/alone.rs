//! Deciding alone while Redis is away: each replica keeps to its fair share, so a
//! fleet that loses Redis does not multiply its quota. Of each account's quota
//! left today it takes `1 / replicas` (the fleet size at the last heartbeat) and
//! leaves the rest to the others, and its limiter spaces requests `replicas`
//! times wider. Its picks are counted, and added to the shared count when Redis
//! is back.

use crate::keys::KeyPool;

/// Takes this replica's share of every account of `pool`, for a fleet of `replicas`.
pub fn begin(pool: &KeyPool, replicas: u32, now_ms: i64) {
    let date = pool.calendar().today(now_ms).date;
    let replicas = replicas.max(1);
    for (index, _) in pool.live_accounts() {
        let account = &pool.accounts()[index];
        let left = account.daily_limit().saturating_sub(account.used_on(date));
        // Rounded down: replicas cannot agree on who would take a remainder.
        account.withhold(date, left - left / replicas);
        account.limiter().widen_for(replicas);
    }
}

/// Redis is back: the whole quota and rate are the fleet's again, decided in Redis.
pub fn end(pool: &KeyPool) {
    for account in pool.accounts() {
        account.withhold(0, 0);
        account.limiter().widen_for(1);
    }
}
