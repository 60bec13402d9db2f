//! Selection, limiter spacing, quotas and blocks, with "now" injected.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::*;

const NOON: i64 = 1_795_521_600_000; // 2026-11-24T12:00:00Z
const MIDNIGHT: i64 = 1_795_564_800_000; // 2026-11-25T00:00:00Z

fn pool(keys: &str, extra: &[(&str, &str)]) -> KeyPool {
    let mut vars: HashMap<String, String> = [("PROXY_API_KEY", "proxy"), ("OPENROUTER_KEYS", keys)]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("valid test config");
    KeyPool::from_config(&config)
}

fn use_quota(pool: &KeyPool, index: usize, n: u32) {
    let date = pool.calendar().today(NOON).date;
    for _ in 0..n {
        assert_eq!(pool.account_of(index).reserve_daily(date), Some(date));
    }
}

/// Asserts that the next free-model pick at NOON is refused as throttled until `until_ms`.
fn assert_throttled_until(pool: &KeyPool, until_ms: i64) {
    assert_eq!(
        pick(pool, Demand::Free, NOON).unwrap_err(),
        Unavailable {
            until_ms,
            reason: Shortage::Throttled
        }
    );
}

/// The index of the key picked, as most tests only care which key it was.
fn pick(pool: &KeyPool, demand: Demand, now_ms: i64) -> Result<usize, Unavailable> {
    pool.pick(demand, now_ms, &[]).map(|p| p.index)
}

#[test]
fn free_requests_go_to_the_key_with_the_largest_remaining_share() {
    let pool = pool(
        "key-aaaa:100,key-bbbb:50,key-cccc:10",
        &[("FREE_BURST", "100")],
    );
    use_quota(&pool, 0, 50); // 50% left
    use_quota(&pool, 1, 10); // 80% left
    use_quota(&pool, 2, 5); // 50% left
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(1));
}

#[test]
fn equal_shares_rotate_least_recently_used_first() {
    let pool = pool("key-aaaa,key-bbbb,key-cccc", &[("FREE_BURST", "100")]);
    let picks: Vec<_> = (0..6)
        .map(|_| pick(&pool, Demand::Other, NOON).unwrap())
        .collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn a_key_at_its_daily_limit_is_skipped_until_the_reset() {
    let pool = pool("key-aaaa:2,key-bbbb:2", &[("FREE_BURST", "100")]);
    use_quota(&pool, 0, 2);
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(1));
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(1));
    let err = pick(&pool, Demand::Free, NOON).unwrap_err();
    assert_eq!(
        err,
        Unavailable {
            until_ms: MIDNIGHT,
            reason: Shortage::DailyLimit
        }
    );
    assert_eq!(pool.state_of(0, NOON), "daily_limit_reached");
    assert_eq!(pick(&pool, Demand::Free, MIDNIGHT), Ok(0));
}

#[test]
fn the_limiter_spaces_free_requests_per_key() {
    let pool = pool("key-aaaa,key-bbbb", &[]); // 20/min, burst 1: one per 3 s
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(0));
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(1));
    assert_throttled_until(&pool, NOON + 3_000);
    assert_eq!(pool.state_of(0, NOON), "throttled");
    assert!(pick(&pool, Demand::Free, NOON + 3_000).is_ok());
    // Refusals did not cost quota: one unit per admitted request.
    let date = pool.calendar().today(NOON).date;
    let used: u32 = pool.accounts().iter().map(|a| a.used_on(date)).sum();
    assert_eq!(used, 3);
}

#[test]
fn paid_requests_use_no_quota_and_no_limiter_token() {
    let pool = pool("key-aaaa:1", &[]);
    for _ in 0..10 {
        assert_eq!(pick(&pool, Demand::Other, NOON), Ok(0));
    }
    let date = pool.calendar().today(NOON).date;
    assert_eq!(pool.account_of(0).used_on(date), 0);
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(0));
}

#[test]
fn daily_blocks_stop_free_requests_only_and_credit_blocks_stop_everything() {
    let pool = pool("key-aaaa,key-bbbb", &[("FREE_BURST", "100")]);
    let until = pool.exhaust_daily(0, None, NOON);
    assert_eq!(until, MIDNIGHT);
    pool.block(1, NOON + 300_000, BlockReason::Credits, NOON);
    let err = pick(&pool, Demand::Free, NOON).unwrap_err();
    assert_eq!(
        err,
        Unavailable {
            until_ms: NOON + 300_000,
            reason: Shortage::Blocked
        }
    );
    assert_eq!(pick(&pool, Demand::Other, NOON), Ok(0));
    assert_eq!(pool.state_of(1, NOON), "blocked");
    assert_eq!(pick(&pool, Demand::Free, NOON + 300_000), Ok(1));
}

#[test]
fn an_upstream_reset_later_than_midnight_outlasts_the_daily_reset() {
    let pool = pool(
        "key-aaaa",
        &[("FREE_BURST", "100"), ("TIMEZONE", "Europe/Moscow")],
    );
    // Moscow midnight is 21:00 UTC; OpenRouter's own reset is 00:00 UTC.
    let moscow_midnight = MIDNIGHT - 3 * 3_600_000;
    pool.exhaust_daily(0, Some(MIDNIGHT), NOON);
    let err = pick(&pool, Demand::Free, moscow_midnight).unwrap_err();
    assert_eq!(err.until_ms, MIDNIGHT);
    assert_eq!(pick(&pool, Demand::Free, MIDNIGHT), Ok(0));
}

#[test]
fn concurrent_pickers_never_exceed_a_limiter_or_a_daily_limit() {
    // Burst 5 and a frozen clock: each key admits exactly 5 requests by its limiter.
    let limited = pool(
        "key-aaaa:1000,key-bbbb:1000,key-cccc:1000",
        &[("FREE_BURST", "5")],
    );
    // Large burst: only the daily limits of 7 bind.
    let daily = pool(
        "key-aaaa:7,key-bbbb:7,key-cccc:7",
        &[("FREE_BURST", "1000")],
    );
    for (pool, per_key) in [(Arc::new(limited), 5), (Arc::new(daily), 7)] {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let mut won = [0u32; 3];
                    for _ in 0..2_000 {
                        if let Ok(i) = pick(&pool, Demand::Free, NOON) {
                            won[i] += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        let mut total = [0u32; 3];
        for t in threads {
            for (sum, n) in total.iter_mut().zip(t.join().unwrap()) {
                *sum += n;
            }
        }
        assert_eq!(
            total, [per_key; 3],
            "every key admitted exactly its allowance"
        );
    }
}

#[test]
fn keys_of_one_account_share_one_daily_quota() {
    let pool = pool(
        "key-a1:3@alice,key-a2@alice,key-b1:3",
        &[("FREE_BURST", "100")],
    );
    let picks: Vec<_> = (0..6)
        .map(|_| pick(&pool, Demand::Free, NOON).unwrap())
        .collect();
    // alice (keys 0 and 1) serves 3 in all, not 3 per key; key 2 is an account of its own.
    let alice = picks.iter().filter(|&&k| k < 2).count();
    assert_eq!((alice, picks.len() - alice), (3, 3));
    // Within alice, the least recently used key serves.
    assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    assert_eq!(
        pick(&pool, Demand::Free, NOON).unwrap_err().reason,
        Shortage::DailyLimit
    );
}

#[test]
fn the_account_with_the_largest_share_left_wins_then_its_least_recently_used_key() {
    let pool = pool("key-a1:10@a,key-a2@a,key-b1:10", &[("FREE_BURST", "100")]);
    use_quota(&pool, 2, 5); // b: 50% left; a: 100% left
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(0));
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(1));
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(0));
}

#[test]
fn two_keys_of_one_account_are_spaced_as_one_by_the_limiter() {
    let pool = pool("key-a1@a,key-a2@a", &[]); // 20/min, burst 1: one per 3 s for the account
    assert!(pick(&pool, Demand::Free, NOON).is_ok());
    assert_throttled_until(&pool, NOON + 3_000);
}

#[test]
fn a_throttled_account_shows_as_throttled_live_and_says_for_how_long() {
    let pool = pool("key-aaaa", &[("FREE_RPM", "1")]);
    assert_eq!(pool.state_of(0, NOON), "active");
    assert!(pick(&pool, Demand::Free, NOON).is_ok());
    // No refusal needed: the limiter's own state says it.
    assert_eq!(pool.state_of(0, NOON), "throttled");
    assert_eq!(
        pool.account_of(0).next_free_slot_ms(NOON + 20_000),
        NOON + 60_000
    );
    assert_eq!(pool.state_of(0, NOON + 59_999), "throttled");
    assert_eq!(pool.state_of(0, NOON + 60_000), "active");
}

#[test]
fn a_key_block_takes_out_only_that_key_of_its_account() {
    let pool = pool("key-a1@a,key-a2@a", &[("FREE_BURST", "100")]);
    pool.block(0, NOON + 300_000, BlockReason::Unauthorized, NOON);
    for _ in 0..3 {
        assert_eq!(pick(&pool, Demand::Other, NOON), Ok(1));
        assert_eq!(pick(&pool, Demand::Free, NOON), Ok(1));
    }
    // A 402 is the account's: both keys stop.
    pool.block(1, NOON + 300_000, BlockReason::Credits, NOON);
    assert_eq!(
        pick(&pool, Demand::Other, NOON).unwrap_err().reason,
        Shortage::Blocked
    );
}

#[test]
fn the_quota_comes_back_at_openrouter_s_reset_instant_not_local_midnight() {
    let pool = pool(
        "key-aaaa:5",
        &[("FREE_BURST", "100"), ("TIMEZONE", "America/New_York")],
    );
    let reset = NOON + 2_000;
    assert_eq!(pool.exhaust_daily(0, Some(reset), NOON), reset);
    assert_eq!(
        pick(&pool, Demand::Free, NOON + 1_999)
            .unwrap_err()
            .until_ms,
        reset
    );
    assert_eq!(pick(&pool, Demand::Free, reset), Ok(0));
    let date = pool.calendar().today(reset).date;
    assert_eq!(
        pool.account_of(0).used_on(date),
        1,
        "a fresh window, not the old count"
    );
}

#[test]
fn keys_with_one_user_id_merge_into_one_account() {
    let pool = pool("key-a:4,key-b:4,key-c:4", &[("FREE_BURST", "100")]);
    use_quota(&pool, 0, 1);
    use_quota(&pool, 1, 2);
    pool.block(1, NOON + 60_000, BlockReason::PerMinuteLimit, NOON);
    pool.learn_user(0, "user_2abc", NOON);
    pool.learn_user(1, "user_2abc", NOON);
    assert_eq!(pool.keys()[0].account(), pool.keys()[1].account());
    assert_ne!(pool.keys()[0].account(), pool.keys()[2].account());
    let date = pool.calendar().today(NOON).date;
    let merged = pool.account_of(0);
    assert_eq!(merged.used_on(date), 3, "counts add up");
    assert_eq!(
        merged.free_block_at(NOON).unwrap().reason,
        BlockReason::PerMinuteLimit
    );
    assert!(merged.learned.load(Relaxed));
    assert_eq!(pool.account_id(pool.keys()[0].account()), "user_2abc");
    assert_eq!(pool.live_accounts().len(), 2);
}

#[test]
fn merged_counts_are_capped_at_the_limit() {
    let pool = pool("key-a:4,key-b:4", &[("FREE_BURST", "100")]);
    use_quota(&pool, 0, 3);
    use_quota(&pool, 1, 3);
    pool.learn_user(1, "u", NOON);
    pool.learn_user(0, "u", NOON);
    let date = pool.calendar().today(NOON).date;
    assert_eq!(pool.account_of(0).used_on(date), 4);
}

#[test]
fn a_configured_account_wins_over_a_learned_grouping() {
    let pool = pool("key-a@alice,key-b@bob,key-c", &[]);
    pool.learn_user(0, "user_1", NOON);
    pool.learn_user(1, "user_1", NOON);
    assert_ne!(
        pool.keys()[0].account(),
        pool.keys()[1].account(),
        "configured apart"
    );
    // An unnamed key of the same user joins the configured account.
    pool.learn_user(2, "user_1", NOON);
    assert_eq!(pool.keys()[2].account(), pool.keys()[0].account());
    assert_eq!(pool.account_id(pool.keys()[2].account()), "alice");
}

#[test]
fn a_reload_carries_counts_blocks_and_spacing_to_the_keys_that_stay() {
    let old = pool("key-aaaa:10,key-bbbb:10", &[("FREE_BURST", "1")]);
    assert_eq!(pick(&old, Demand::Free, NOON), Ok(0));
    old.block(1, NOON + 3_600_000, BlockReason::Unauthorized, NOON);
    old.keys()[0].count_sent();
    old.record(0, Outcome::Success);
    // A moves into account "team" with a new key and a lower limit; B stays; D is new.
    let new = pool(
        "key-cccc@team,key-aaaa:5@team,key-bbbb,key-dddd",
        &[("FREE_BURST", "1")],
    );
    assert_eq!(new.carry_over(&old, NOON), 2);
    let date = new.calendar().today(NOON).date;
    assert_eq!(new.account_of(1).used_on(date), 1, "A's count came along");
    assert_eq!(new.account_of(0).used_on(date), 1, "A's account is C's now");
    assert_eq!(new.account_of(3).used_on(date), 0);
    assert!(
        new.account_of(1).next_free_slot_ms(NOON) > NOON,
        "the limiter's spacing came along"
    );
    assert_eq!(new.state_of(2, NOON), "blocked", "B's 401 came along");
    assert_eq!(new.keys()[1].totals.values()[..2], [1, 1]);
    // The next free pick spreads to an account with spacing left: D's.
    assert_eq!(pick(&new, Demand::Free, NOON), Ok(3));
}

#[test]
fn a_daily_429_read_after_its_own_reset_instant_uses_nothing_up() {
    // The answer arrived (or was read) after the window it names had ended: the quota is
    // back, and neither the day nor the fleet's count is marked used up.
    let pool = pool("key-aaaa:5", &[("FREE_BURST", "100")]);
    assert_eq!(pool.exhaust_daily(0, Some(NOON - 1), NOON), NOON);
    let date = pool.calendar().today(NOON).date;
    assert_eq!(pool.account_of(0).used_on(date), 0);
    assert_eq!(pool.account_of(0).share.floor_on(date), 0);
    assert_eq!(pick(&pool, Demand::Free, NOON), Ok(0));
}
