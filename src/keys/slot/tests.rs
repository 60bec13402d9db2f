//! Packed counters and blocks of one key.
use super::*;
use governor::clock::FakeRelativeClock;
use std::num::NonZeroU32;

fn slot(limit: u32) -> KeySlot<FakeRelativeClock> {
    let spec = KeySpec {
        secret: "sk-or-v1-0123456789abcdef".into(),
        daily_limit: Some(limit),
    };
    KeySlot::new(
        &spec,
        Quota::per_minute(NonZeroU32::new(20).unwrap()),
        FakeRelativeClock::default(),
    )
    .unwrap()
}

#[test]
fn daily_quota_is_reserved_up_to_the_limit_and_resets_with_the_date() {
    let s = slot(2);
    assert!(s.reserve_daily(20_261_124));
    assert!(s.reserve_daily(20_261_124));
    assert!(!s.reserve_daily(20_261_124));
    assert_eq!(s.used_on(20_261_124), 2);
    assert_eq!(s.used_on(20_261_125), 0);
    assert!(s.reserve_daily(20_261_125));
    assert_eq!(s.used_on(20_261_125), 1);
    s.release_daily(20_261_125);
    assert_eq!(s.used_on(20_261_125), 0);
}

#[test]
fn exhausting_the_day_uses_up_the_quota() {
    let s = slot(50);
    assert!(s.reserve_daily(1));
    s.exhaust_daily(1);
    assert_eq!(s.used_on(1), 50);
    assert!(!s.reserve_daily(1));
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
            reason: BlockReason::PerMinuteLimit,
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
fn the_bearer_header_is_sensitive_and_the_id_masked() {
    let s = slot(50);
    assert!(s.authorization.is_sensitive());
    assert_eq!(s.id, "sk-or-v1-01…cdef");
}
