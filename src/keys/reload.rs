//! A reloaded key list (SIGHUP): the new pool takes over, by key fingerprint,
//! what the old one knew about the keys that stay, so re-limiting a key or
//! adding one never hands out quota OpenRouter has already counted.

use std::sync::atomic::Ordering::Relaxed;

use super::KeyPool;

impl KeyPool {
    /// Takes over from `old` (the pool this one replaces) what it knew about every key
    /// still configured: user ids first (so learned accounts form again), then per
    /// account today's count, blocks and limiter spacing, then per key its blocks,
    /// totals, last use and probe. Returns how many keys stayed.
    pub fn carry_over(&self, old: &KeyPool, now_ms: i64) -> usize {
        let pairs: Vec<(usize, usize)> = old
            .keys
            .iter()
            .enumerate()
            .filter_map(|(from, key)| self.index_of(&key.fingerprint).map(|to| (from, to)))
            .collect();
        for &(from, to) in &pairs {
            if let Some(user) = old.keys[from].user_id.get() {
                self.learn_user(to, user, now_ms);
            }
        }
        let date = self.calendar.today(now_ms).date;
        // Each old account once into each new account one of its keys went to: counts add
        // up (a key moved into an account brings what OpenRouter counted for it).
        let mut absorbed: Vec<(usize, usize)> = Vec::new();
        for &(from, to) in &pairs {
            let pair = (old.keys[from].account(), self.keys[to].account());
            if !absorbed.contains(&pair) {
                absorbed.push(pair);
                self.accounts[pair.1].absorb(&old.accounts[pair.0], date, now_ms);
            }
        }
        for &(from, to) in &pairs {
            self.keys[to].carry_from(&old.keys[from], now_ms, date);
        }
        self.picks.fetch_max(old.picks.load(Relaxed), Relaxed);
        self.history.absorb(&old.history, now_ms);
        pairs.len()
    }

    /// The index of the key with `fingerprint`, if it is configured.
    #[must_use]
    pub fn index_of(&self, fingerprint: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.fingerprint == fingerprint)
    }
}

impl super::KeySlot {
    /// Takes over what `old` (this key in the replaced pool) knew: its own block, totals,
    /// last use, pick order and probe.
    fn carry_from(&self, old: &super::KeySlot, now_ms: i64, date: u32) {
        if let Some(block) = old.block_at(now_ms) {
            self.block.extend(block, now_ms);
        }
        self.restore_totals(&old.totals.values());
        self.set_last_used(old.last_used_ms(), old.last_pick.load(Relaxed));
        self.probe.copy_from(&old.probe);
        self.spent.absorb(&old.spent, date);
    }
}
