//! What belongs to one key alone.
use super::*;
use crate::keys::BlockReason;

fn slot() -> KeySlot {
    let spec = KeySpec {
        secret: "sk-or-v1-0123456789abcdef".into(),
        daily_limit: Some(50),
        account: None,
    };
    KeySlot::new(&spec, 1, 0).unwrap()
}

#[test]
fn a_key_block_ends_at_its_instant_and_is_never_shortened() {
    let s = slot();
    let long = Block {
        until_ms: 5_000,
        reason: BlockReason::Unauthorized,
    };
    s.block.extend(long, 0);
    s.block.extend(
        Block {
            until_ms: 2_000,
            reason: BlockReason::KeyLimit,
        },
        0,
    );
    assert_eq!(s.block_at(4_999), Some(long));
    assert_eq!(s.block_at(5_000), None);
}

#[test]
fn the_bearer_header_is_sensitive_and_the_id_numbered_and_masked() {
    let s = slot();
    assert!(s.authorization.is_sensitive());
    assert_eq!(s.id, "#1 sk-or-v1-01…cdef");
}
