//! Selection, limiter spacing, quotas and blocks, with "now" injected.

use std::collections::HashMap;
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
    let err = pick(&pool, Demand::Free, NOON).unwrap_err();
    assert_eq!(
        err,
        Unavailable {
            until_ms: NOON + 3_000,
            reason: Shortage::Throttled
        }
    );
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
