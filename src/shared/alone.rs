//! Deciding alone while Redis is away: each replica keeps to its fair share, so a
//! fleet that loses Redis does not multiply its quota. Of each account's quota
//! left in the current window it takes `1 / replicas` (the fleet size at the last
//! heartbeat, remembered across restarts) and leaves the rest to the others, in
//! any window that begins during the outage `1 / replicas` of the whole limit
//! (see `keys::share`), and its limiter spaces requests `replicas` times wider.
//! What it sends is its own count in the window, pushed to Redis when it is back.

use crate::keys::KeyPool;

/// Takes this replica's share of every account of `pool` not yet deciding alone (all of
/// them when Redis goes away; after a reload, the accounts the new key list added).
pub fn begin(pool: &KeyPool, replicas: u32, now_ms: i64) {
    let date = pool.calendar().today(now_ms).date;
    let replicas = replicas.max(1);
    for (index, _) in pool.live_accounts() {
        let account = &pool.accounts()[index];
        account.roll_window(date, now_ms);
        let left = account.daily_limit().saturating_sub(account.used_on(date));
        if account.share.go_alone(date, left, replicas) {
            account.limiter().widen_for(replicas);
        }
    }
}

/// Redis is back: the whole quota and rate are the fleet's again, decided in Redis.
pub fn end(pool: &KeyPool) {
    for account in pool.accounts() {
        account.share.end_alone();
        account.limiter().widen_for(1);
    }
}
