//! What the state file keeps of each client, by name: today's counts and the lifetime
//! totals, so a restart loses nothing. Never the key nor its hash.

use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering::Relaxed;

use super::{Client, Clients};
use crate::keys::Usage;

/// One client in the state file.
#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
pub struct ClientRecord {
    name: String,
    /// The quota day the `today` figures belong to.
    day: u32,
    /// Requests and free requests that day.
    requests: [u64; 2],
    /// Lifetime requests and free requests.
    lifetime_requests: [u64; 2],
    /// `[prompt tokens, completion tokens, nano-USD]` that day and in all.
    usage_today: [u64; 3],
    usage_lifetime: [u64; 3],
}

impl Client {
    fn record(&self, date: u32) -> ClientRecord {
        // This replica's own: with Redis, the others' are theirs to keep.
        let (requests, free) = (
            self.counts.requests.mine_on(date),
            self.counts.free_requests.mine_on(date),
        );
        ClientRecord {
            name: self.spec.name.clone(),
            day: date,
            requests: [u64::from(requests), u64::from(free)],
            lifetime_requests: self.counts.lifetime.each_ref().map(|n| n.load(Relaxed)),
            usage_today: self.counts.spent.today(date).parts(),
            usage_lifetime: self.counts.spent.lifetime().parts(),
        }
    }

    fn restore(&self, record: &ClientRecord, today: u32) {
        if record.day == today {
            let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            self.counts
                .requests
                .raise_mine(today, count(record.requests[0]));
            self.counts
                .free_requests
                .raise_mine(today, count(record.requests[1]));
        }
        for (counter, value) in self.counts.lifetime.iter().zip(record.lifetime_requests) {
            counter.store(value, Relaxed);
        }
        let kept = if record.day == today {
            Usage::from_parts(record.usage_today)
        } else {
            Usage::default()
        };
        self.counts
            .spent
            .restore(today, kept, Usage::from_parts(record.usage_lifetime));
    }
}

/// Every client's record for quota day `date`.
#[must_use]
pub fn records(clients: &Clients, date: u32) -> Vec<ClientRecord> {
    clients.all().iter().map(|c| c.record(date)).collect()
}

/// Restores each still-configured client from `records` (a client no longer in the file
/// is left out; a new one starts from nothing).
pub fn restore(clients: &Clients, records: &[ClientRecord], today: u32) {
    for record in records {
        if let Some(client) = clients.all().iter().find(|c| c.spec.name == record.name) {
            client.restore(record, today);
        }
    }
}
