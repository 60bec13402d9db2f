//! Packed counters, windows and blocks of one account.
use super::*;
use crate::keys::BlockReason;

fn account(limit: u32) -> Account {
    Account::new(None, Some(limit), 20, 1)
}

#[test]
fn daily_quota_is_reserved_up_to_the_limit_and_resets_with_the_date() {
    let a = account(2);
    assert_eq!(a.reserve_daily(20_261_124), Some(20_261_124));
    assert_eq!(a.reserve_daily(20_261_124), Some(20_261_124));
    assert_eq!(a.reserve_daily(20_261_124), None);
    assert_eq!(a.used_on(20_261_124), 2);
    assert_eq!(a.used_on(20_261_125), 0);
    assert_eq!(a.reserve_daily(20_261_125), Some(20_261_125));
    assert_eq!(a.used_on(20_261_125), 1);
    a.release_daily(20_261_125);
    assert_eq!(a.used_on(20_261_125), 0);
}

#[test]
fn a_stale_date_never_wipes_the_newer_day() {
    // A pick or probe that computed yesterday's date just before midnight.
    let a = account(5);
    a.reserve_daily(20_261_125).unwrap();
    a.reserve_daily(20_261_125).unwrap();
    assert_eq!(a.reserve_daily(20_261_124), Some(20_261_125));
    assert_eq!(a.used_on(20_261_125), 3);
    a.raise_used(20_261_124, 4);
    a.exhaust_daily(20_261_124, None);
    assert_eq!(a.used_on(20_261_125), 3);
}

#[test]
fn exhausting_the_day_uses_up_the_quota_until_openrouter_s_reset() {
    let a = account(50);
    assert_eq!(a.reserve_daily(1), Some(1));
    a.exhaust_daily(1, Some(5_000));
    assert_eq!(a.used_on(1), 50);
    assert_eq!(a.reserve_daily(1), None);
    a.roll_window(1, 4_999);
    assert_eq!(a.used_on(1), 50);
    // OpenRouter's window ended: the count starts again, though the local day goes on.
    a.roll_window(1, 5_000);
    assert_eq!(a.used_on(1), 0);
    assert_eq!(a.window_ends_ms(), None);
}

#[test]
fn a_free_model_block_never_hides_a_block_of_every_request() {
    let a = account(50);
    let daily = Block {
        until_ms: 86_400_000,
        reason: BlockReason::DailyLimit,
    };
    a.block_until(daily, 0);
    a.block_until(
        Block {
            until_ms: 300_000,
            reason: BlockReason::Credits,
        },
        0,
    );
    assert_eq!(a.block_at(1).unwrap().reason, BlockReason::Credits);
    assert_eq!(a.free_block_at(1), Some(daily));
    assert_eq!(a.block_at(300_000), None);
    assert_eq!(a.free_block_at(300_000), Some(daily));
}

#[test]
fn absorbing_an_account_adds_counts_up_to_the_limit_and_keeps_the_stricter_blocks() {
    let (a, b) = (account(5), account(5));
    for _ in 0..2 {
        a.reserve_daily(7).unwrap();
    }
    for _ in 0..4 {
        b.reserve_daily(7).unwrap();
    }
    b.block_until(
        Block {
            until_ms: 9_000,
            reason: BlockReason::PerMinuteLimit,
        },
        0,
    );
    b.take_slot(1_000).unwrap();
    a.absorb(&b, 7, 1_000);
    assert_eq!(a.used_on(7), 5, "2 + 4, capped at the limit of 5");
    assert_eq!(a.free_block_at(1_000).unwrap().until_ms, 9_000);
    // One limiter: b's last slot still spaces a's next request.
    assert_eq!(a.next_free_slot_ms(1_000), 4_000);
}
