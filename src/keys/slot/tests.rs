//! What belongs to one key alone.
use super::*;
use crate::keys::BlockReason;

fn slot() -> KeySlot {
    let spec = KeySpec {
        secret: "sk-or-v1-0123456789abcdef".into(),
        daily_limit: Some(50),
        account: None,
    };
    let fingerprint = fingerprint(&spec.secret);
    let id = short_ids(std::slice::from_ref(&fingerprint))[0].to_owned();
    KeySlot::new(&spec, fingerprint, &id, 0).unwrap()
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
fn the_bearer_header_is_sensitive_and_the_id_a_short_fingerprint_and_masked() {
    let s = slot();
    assert!(s.authorization.is_sensitive());
    assert_eq!(s.id, format!("#{} sk-or-v1-01…cdef", &s.fingerprint[..4]));
}

#[test]
fn short_ids_are_four_digits_unless_another_key_shares_them() {
    let list = ["3f9a01", "3f9a02", "3f9b00", "c0ffee"].map(String::from);
    assert_eq!(short_ids(&list), ["3f9a01", "3f9a02", "3f9b", "c0ff"]);
    // A key's id does not depend on its position or on the keys around it.
    let reordered = ["c0ffee", "3f9b00"].map(String::from);
    assert_eq!(short_ids(&reordered), ["c0ff", "3f9b"]);
}
