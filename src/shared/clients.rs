//! Clients across the fleet: with `REDIS_URL`, a client's daily request and
//! free-request limits and its per-minute limit hold for the whole fleet. A
//! free-model request of a client with one of them is counted by its key's pick
//! script ([`Shared::confirm`] with the client: one round trip for both); a
//! paid-model one is admitted by a script of its own ([`Shared::admit`]); either
//! counts it as this replica's. Its tokens and cost, and the counts of clients
//! without such limits, travel with the merge. As for
//! accounts, each replica writes only its own absolute counts (`r:<replica>`, …),
//! an admission it stopped waiting for is fenced, and while Redis is away each
//! replica keeps a client to `1 / replicas` of what is left of each daily limit
//! and its per-minute rate. `max_concurrent` holds per replica.

use std::sync::Arc;

use redis::Value;

use super::{scripts, Shared, Waiting};
use crate::clients::admission::Today;
use crate::clients::{Client, Counts, Refused};
use crate::keys::Usage;

/// What Redis said about a client's request.
pub enum Admitted {
    /// Counted for the fleet.
    Taken,
    /// The fleet reached one of the client's daily limits.
    Over(Refused),
    /// The client's per-minute limit had no slot before the deadline.
    Busy,
    /// Redis is away: decide alone (the client's share is taken).
    Away,
}

/// Why a script did not count a client's request (`admit_client`'s `{5, which}` or
/// `{6, wait}`), if that is what `answer` says.
pub(super) fn client_refused(answer: &[i64]) -> Option<Result<Refused, i64>> {
    match answer {
        [5, 1, ..] => Some(Ok(Refused::RequestsPerDay)),
        [5, _, ..] => Some(Ok(Refused::FreeRequestsPerDay)),
        [6, wait, ..] => Some(Err(*wait)),
        _ => None,
    }
}

impl Shared {
    /// Admits a request of `client` (`free`: for free models) for the whole fleet, waiting
    /// for its per-minute limit until `deadline`. Only for a client with a shared limit; the
    /// caller holds its counts unsettled until it has counted what it decided.
    pub async fn admit(
        &self,
        client: &Client,
        free: bool,
        today: Today,
        deadline: tokio::time::Instant,
    ) -> Admitted {
        loop {
            if !self.in_use() {
                client.go_alone(today.date, self.fleet_or_assumed());
                return Admitted::Away;
            }
            match self.admit_once(client, free, today).await {
                Ok(Some(wait_ms)) => {
                    let at = tokio::time::Instant::now()
                        + std::time::Duration::from_millis(wait_ms.clamp(1, 60_000) as u64);
                    if at > deadline {
                        return Admitted::Busy;
                    }
                    tokio::time::sleep_until(at).await;
                }
                Ok(None) => return Admitted::Taken,
                Err(admitted) => return admitted,
            }
        }
    }

    /// One try: `Ok(None)` taken, `Ok(Some(ms))` the per-minute limit's wait, or the outcome.
    async fn admit_once(
        &self,
        client: &Client,
        free: bool,
        today: Today,
    ) -> Result<Option<i64>, Admitted> {
        let counts = &client.counts;
        let hash = self.names.client(client.name());
        let seq = self
            .next_pick
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut waiting = Waiting::new(self, &hash, seq);
        let (limits, shape) = limit_args(client);
        let mut invocation = scripts::ADMIT.prepare_invoke();
        invocation
            .key(&hash)
            .arg(self.client_args(counts, today))
            .arg(limits)
            .arg(u8::from(free))
            .arg(shape)
            .arg(seq);
        let invocation = &invocation;
        let call = self.query(|mut connection| async move {
            invocation.invoke_async::<Vec<i64>>(&mut connection).await
        });
        let Ok(Ok(answer)) = tokio::time::timeout(self.target.timeout, call).await else {
            // Fenced before anything is counted alone, as for a pick. The merge says Redis
            // is away for the whole replica within a round.
            waiting.fence();
            client.go_alone(today.date, self.fleet_or_assumed());
            return Err(Admitted::Away);
        };
        waiting.answered();
        // Redis decides again: the share taken while it was away is given up.
        client.end_alone();
        match client_refused(&answer) {
            Some(Ok(why)) => Err(Admitted::Over(why)),
            Some(Err(wait_ms)) => Ok(Some(wait_ms)),
            None if answer.first() == Some(&0) => {
                client.count_mine(today.date, free);
                Ok(None)
            }
            // `{4}` (fenced) answers only an admission nobody waits for any more.
            None => Err(Admitted::Busy),
        }
    }

    /// The arguments every client script starts with: offset, replica, date, own requests,
    /// own free requests.
    fn client_args<'a>(&'a self, counts: &Counts, today: Today) -> (i64, &'a str, u32, u32, u32) {
        (
            today.offset_ms,
            self.replica(),
            today.date,
            counts.requests.mine_on(today.date),
            counts.free_requests.mine_on(today.date),
        )
    }

    /// Gives back in Redis a request [`Self::admit`] counted that never reached OpenRouter
    /// (given back here already); in the background.
    pub fn give_back_client(self: &Arc<Self>, counts: &Arc<Counts>, date: u32, free: bool) {
        counts.requests.unsettle();
        if free {
            counts.free_requests.unsettle();
        }
        let mut invocation = scripts::GIVE_BACK_CLIENT.prepare_invoke();
        invocation
            .key(self.names.client(&counts.name))
            .arg(date)
            .arg(self.replica())
            .arg(u8::from(free));
        let counts = Arc::clone(counts);
        self.in_background(invocation, move || {
            counts.requests.settle();
            if free {
                counts.free_requests.settle();
            }
        });
    }

    /// Adds the merge of `client` to `pipe`; returns its hash and the fences sent.
    pub(super) fn plan_client(
        &self,
        pipe: &mut redis::Pipeline,
        client: &Client,
        today: Today,
    ) -> (String, Vec<u64>) {
        let counts = &client.counts;
        let hash = self.names.client(client.name());
        let args = self.client_args(counts, today);
        // Read after the counts: an admission in them that had no answer is fenced here.
        let fences = self.fences_of(&hash);
        let spent = counts.spent.today(today.date);
        pipe.cmd("EVALSHA")
            .arg(scripts::SYNC_CLIENT.get_hash())
            .arg(1)
            .arg(&hash)
            .arg(args)
            .arg(spent.prompt_tokens)
            .arg(spent.completion_tokens)
            .arg(spent.cost_nano)
            .arg(&fences);
        (hash, fences)
    }
}

/// What the scripts take of `client`'s limits: its daily request and free-request limits
/// (-1: none), and its per-minute limiter's interval and burst tolerance in ms (0: none).
pub(super) fn limit_args(client: &Client) -> ((i64, i64), (i64, i64)) {
    let limits = &client.spec.limits;
    let limit = |l: Option<u64>| l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    (
        (
            limit(limits.requests_per_day),
            limit(limits.free_requests_per_day),
        ),
        client.limiter_shape_ms().unwrap_or((0, 0)),
    )
}

/// Brings the fleet's counts of `client` back from the merge's `value`:
/// `{date, own requests, own free, others' requests, free, prompt, completion, nano-USD}`.
/// False if Redis could not merge it.
pub(super) fn apply_client(client: &Client, value: &Value, date: u32) -> bool {
    let Ok(fields) = redis::from_redis_value::<Vec<i64>>(value.clone()) else {
        return false;
    };
    let [day, own, own_free, requests, free, prompt, completion, cost] = fields[..] else {
        return false;
    };
    if u32::try_from(day) != Ok(date) {
        return true;
    }
    let count = |n: i64| u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX });
    let spent = |n: i64| u64::try_from(n).unwrap_or(0);
    let counts = &client.counts;
    counts.requests.raise_mine_to_redis(date, count(own));
    counts
        .free_requests
        .raise_mine_to_redis(date, count(own_free));
    counts.requests.set_others(date, count(requests));
    counts.free_requests.set_others(date, count(free));
    counts.others_spent.set(
        date,
        Usage::from_parts([spent(prompt), spent(completion), spent(cost)]),
    );
    true
}
