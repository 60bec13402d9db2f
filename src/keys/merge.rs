//! Learned accounts: OpenRouter's answers name the user behind a key
//! (`user_id` in error bodies, the `/key` answer). Two keys carrying one user
//! id are one account from that moment: their accounts merge (today's counts
//! add up, capped at the limit; the stricter block wins; one limiter). A
//! configured `@account` always wins over a learned grouping.

use std::sync::atomic::Ordering::Relaxed;

use super::KeyPool;

impl KeyPool {
    /// Remembers that key `index` belongs to OpenRouter user `user_id`, and merges its
    /// account with that of any other key of the same user.
    pub fn learn_user(&self, index: usize, user_id: &str, now_ms: i64) {
        let key = &self.keys[index];
        if key.user_id.get().is_some_and(|known| known == user_id) && self.merged_with_peers(index)
        {
            return;
        }
        let _ = key.user_id.set(user_id.to_owned());
        let _merging = self
            .merging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self.accounts[key.account()].user_id.set(user_id.to_owned());
        let peers: Vec<usize> = (0..self.keys.len())
            .filter(|&other| {
                other != index
                    && self.keys[other].user_id.get().is_some_and(|u| u == user_id)
                    && self.keys[other].account() != self.keys[index].account()
            })
            .collect();
        for peer in peers {
            self.merge(index, peer, user_id, now_ms);
        }
    }

    /// True when every other key known to share `index`'s user id is already in its account.
    fn merged_with_peers(&self, index: usize) -> bool {
        let key = &self.keys[index];
        self.keys.iter().all(|other| {
            other.user_id.get() != key.user_id.get() || other.account() == key.account()
        })
    }

    /// Merges the accounts of keys `a` and `b` (same OpenRouter user), unless both were
    /// configured with different names: then the configuration stands, logged once.
    fn merge(&self, a: usize, b: usize, user_id: &str, now_ms: i64) {
        let (account_a, account_b) = (self.keys[a].account(), self.keys[b].account());
        let (named_a, named_b) = (
            self.accounts[account_a].name.is_some(),
            self.accounts[account_b].name.is_some(),
        );
        if named_a && named_b {
            let survivor = &self.accounts[account_a];
            if !survivor.disagreement_logged.swap(true, Relaxed) {
                log::warn!(
                    "keys {} (account {}) and {} (account {}) belong to one OpenRouter user ({user_id}); keeping the configured accounts",
                    self.keys[a].id,
                    self.account_id(account_a),
                    self.keys[b].id,
                    self.account_id(account_b)
                );
            }
            return;
        }
        // A configured account keeps its name and limit; otherwise the earlier one survives.
        let (survivor, absorbed) = if named_b || (!named_a && account_b < account_a) {
            (account_b, account_a)
        } else {
            (account_a, account_b)
        };
        let day = self.calendar.today(now_ms);
        self.accounts[survivor].absorb(&self.accounts[absorbed], day.date, now_ms);
        let _ = self.accounts[survivor].user_id.set(user_id.to_owned());
        self.accounts[survivor].learned.store(true, Relaxed);
        for key in self.keys.iter().filter(|k| k.account() == absorbed) {
            key.account.store(survivor, Relaxed);
        }
        log::warn!(
            "keys {} and {} belong to one OpenRouter account (user {user_id}): they now share one daily quota and limiter",
            self.keys[a].id,
            self.keys[b].id
        );
    }
}
