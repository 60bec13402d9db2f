//! Blocks: why OpenRouter refused a key or an account, until when, and which
//! requests that stops. A block is one packed `u64` (reason and end), so it is
//! read and replaced atomically without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

// Self-contained packed words: no other memory is published through them, so `Relaxed`.

/// Why a key or its account is blocked. Daily and per-minute blocks stop only free-model
/// requests of the account; credits stop every request of the account; a key limit and a
/// 401 stop only that key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockReason {
    DailyLimit = 1,
    PerMinuteLimit = 2,
    Credits = 3,
    KeyLimit = 4,
    Unauthorized = 5,
}

impl BlockReason {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::DailyLimit,
            2 => Self::PerMinuteLimit,
            3 => Self::Credits,
            4 => Self::KeyLimit,
            5 => Self::Unauthorized,
            _ => return None,
        })
    }

    /// The name shown in `/key_status` and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DailyLimit => "daily_limit",
            Self::PerMinuteLimit => "per_minute_limit",
            Self::Credits => "insufficient_credits",
            Self::KeyLimit => "key_limit_exceeded",
            Self::Unauthorized => "unauthorized",
        }
    }

    /// The reason named by [`Self::as_str`].
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::DailyLimit,
            Self::PerMinuteLimit,
            Self::Credits,
            Self::KeyLimit,
            Self::Unauthorized,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

/// A block in force: until when, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub until_ms: i64,
    pub reason: BlockReason,
}

const UNTIL_MASK: u64 = (1 << 56) - 1;

fn pack_block(block: Block) -> u64 {
    ((block.reason as u64) << 56) | (block.until_ms.max(0) as u64 & UNTIL_MASK)
}

fn unpack_block(word: u64) -> Option<Block> {
    let reason = BlockReason::from_u8((word >> 56) as u8)?;
    Some(Block {
        until_ms: (word & UNTIL_MASK) as i64,
        reason,
    })
}

/// Where a block applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The account's free-model requests (daily, per-minute).
    AccountFree,
    /// Every request of the account (402 credits).
    Account,
    /// Every request through this one key (401, 403 key limit).
    Key,
}

impl BlockReason {
    /// Whom this block is about, and which requests it stops.
    #[must_use]
    pub fn scope(self) -> Scope {
        match self {
            Self::DailyLimit | Self::PerMinuteLimit => Scope::AccountFree,
            Self::Credits => Scope::Account,
            Self::KeyLimit | Self::Unauthorized => Scope::Key,
        }
    }
}

/// One block word: the block in force until its end, replaced only by a longer one.
#[derive(Default)]
pub struct BlockWord(AtomicU64);

impl BlockWord {
    /// The block in force at `now_ms`, if any.
    #[must_use]
    #[inline]
    pub fn at(&self, now_ms: i64) -> Option<Block> {
        let word = self.0.load(Relaxed);
        // Almost always: never blocked. One compare and no unpacking, as this runs for every
        // key of every pick.
        if word == 0 {
            return None;
        }
        if (word & UNTIL_MASK) as i64 <= now_ms {
            // Over: cleared so later looks take the fast path; a block set meanwhile is kept.
            let _ = self.0.compare_exchange(word, 0, Relaxed, Relaxed);
            return None;
        }
        unpack_block(word)
    }

    /// Blocks until `block.until_ms`; a longer block already in force is kept.
    pub fn extend(&self, block: Block, now_ms: i64) {
        let new = pack_block(block);
        let _ = self
            .0
            .fetch_update(Relaxed, Relaxed, |word| match unpack_block(word) {
                Some(old) if old.until_ms > now_ms && old.until_ms >= block.until_ms => None,
                _ => Some(new),
            });
    }

    /// Sets the block as remembered (state file), whatever is there.
    pub fn restore(&self, block: Block) {
        self.0.store(pack_block(block), Relaxed);
    }
}
