//! Packed counters and blocks of one key.
use super::*;

fn slot(limit: u32) -> KeySlot {
    let spec = KeySpec {
        secret: "sk-or-v1-0123456789abcdef".into(),
        daily_limit: Some(limit),
    };
    KeySlot::new(&spec, 1, 20, 1).unwrap()
}

#[test]
fn daily_quota_is_reserved_up_to_the_limit_and_resets_with_the_date() {
    let s = slot(2);
    assert_eq!(s.reserve_daily(20_261_124), Some(20_261_124));
    assert_eq!(s.reserve_daily(20_261_124), Some(20_261_124));
    assert_eq!(s.reserve_daily(20_261_124), None);
    assert_eq!(s.used_on(20_261_124), 2);
    assert_eq!(s.used_on(20_261_125), 0);
    assert_eq!(s.reserve_daily(20_261_125), Some(20_261_125));
    assert_eq!(s.used_on(20_261_125), 1);
    s.release_daily(20_261_125);
    assert_eq!(s.used_on(20_261_125), 0);
}

#[test]
fn a_stale_date_never_wipes_the_newer_day() {
    // A pick or probe that computed yesterday's date just before midnight.
    let s = slot(5);
    s.reserve_daily(20_261_125).unwrap();
    s.reserve_daily(20_261_125).unwrap();
    assert_eq!(s.reserve_daily(20_261_124), Some(20_261_125));
    assert_eq!(s.used_on(20_261_125), 3);
    s.raise_used(20_261_124, 4);
    s.exhaust_daily(20_261_124);
    assert_eq!(s.used_on(20_261_125), 3);
}

#[test]
fn exhausting_the_day_uses_up_the_quota() {
    let s = slot(50);
    assert_eq!(s.reserve_daily(1), Some(1));
    s.exhaust_daily(1);
    assert_eq!(s.used_on(1), 50);
    assert_eq!(s.reserve_daily(1), None);
}

#[test]
fn a_block_ends_at_its_instant_and_is_never_shortened() {
    let s = slot(50);
    s.block_until(
        Block {
            until_ms: 5_000,
            reason: BlockReason::Credits,
        },
        0,
    );
    s.block_until(
        Block {
            until_ms: 2_000,
            reason: BlockReason::KeyLimit,
        },
        0,
    );
    assert_eq!(
        s.block_at(4_999),
        Some(Block {
            until_ms: 5_000,
            reason: BlockReason::Credits
        })
    );
    assert_eq!(s.block_at(5_000), None);
    s.block_until(
        Block {
            until_ms: 9_000,
            reason: BlockReason::Unauthorized,
        },
        6_000,
    );
    assert_eq!(s.block_at(6_000).unwrap().reason, BlockReason::Unauthorized);
}

#[test]
fn a_free_model_block_never_hides_a_block_of_every_request() {
    let s = slot(50);
    let daily = Block {
        until_ms: 86_400_000,
        reason: BlockReason::DailyLimit,
    };
    s.block_until(daily, 0);
    s.block_until(
        Block {
            until_ms: 300_000,
            reason: BlockReason::Unauthorized,
        },
        0,
    );
    assert_eq!(
        s.paid_block_at(1).unwrap().reason,
        BlockReason::Unauthorized
    );
    assert_eq!(s.free_block_at(1), Some(daily));
    assert_eq!(s.paid_block_at(300_000), None);
    assert_eq!(s.block_at(300_000), Some(daily));
}

#[test]
fn the_bearer_header_is_sensitive_and_the_id_masked() {
    let s = slot(50);
    assert!(s.authorization.is_sensitive());
    assert_eq!(s.id, "#1 sk-or-v1-01…cdef");
}
