//! The background merge: every 250 ms (at once when nudged), one pipeline of
//! scripts merges this replica's view of every account and key with the fleet's
//! and brings the result back, plus a heartbeat that gives the fleet's size.
//! Key totals travel as deltas; an account's count as this replica's own
//! absolute number in the window; floors, blocks and the limiter merge by "the
//! larger (later) wins", so a merge that is repeated or arrives late never
//! counts twice. Every value read back is bounded before it is believed, and
//! each account and key is merged on its own, so one bad hash stops nothing
//! else. A failing merge means Redis is away; the next one that works brings
//! it back.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use redis::{RedisResult, Value};

use super::clients::apply_client;
use super::{probes, scripts, Shared};
use crate::app::App;
use crate::clients::admission::Today;
use crate::clients::{Client, Clients};
use crate::keys::{now_ms, Account, Block, BlockReason, KeyPool};

/// How often a replica merges with the fleet: the age limit of a paid pick's view of blocks.
const ROUND: Duration = Duration::from_millis(250);
/// While Redis is away, a merge is tried at most this far apart: a replica is back to
/// sharing within a second of Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A window end this close to now may already have passed for Redis' clock: a count of a
/// window about to reset is not pushed, so it cannot outlive the reset.
const SKEW_MARGIN_MS: i64 = 10_000;
/// The furthest ahead an instant read back from Redis may lie (a block, a window end): a
/// quota day and an hour of clock skew. Anything later is not believed.
pub(super) const FAR_MS: i64 = 25 * 3_600_000;

/// Each key's totals as last merged, so only what changed since travels.
type Baselines = HashMap<String, [u64; 5]>;

/// Merges once (bounded by `REDIS_TIMEOUT_MS`, before the port opens, so a replica starts
/// with the fleet's counts), then keeps merging in the background.
pub async fn start(app: &Arc<App>) {
    let Some(shared) = app.shared.clone() else {
        return;
    };
    let mut baselines = Baselines::new();
    merge_round(&shared, &app.keys(), &app.clients(), &mut baselines).await;
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let mut pause = ROUND;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shared.nudge.notified() => {}
            }
            let ok = merge_round(&shared, &app.keys(), &app.clients(), &mut baselines).await;
            // Away: try again with backoff, 250 ms doubling up to 1 s.
            pause = if ok {
                ROUND
            } else {
                (pause * 2).min(MAX_BACKOFF)
            };
        }
    });
}

/// One merge, with its outcome applied to the replica's state; true if Redis answered.
async fn merge_round(
    shared: &Shared,
    pool: &KeyPool,
    clients: &Clients,
    baselines: &mut Baselines,
) -> bool {
    let now = now_ms();
    let plan = Plan::new(shared, pool, clients, baselines, now);
    let answer = tokio::time::timeout(shared.target.timeout * 4, plan.send(shared)).await;
    match answer {
        Ok(Ok(values)) => {
            plan.apply(shared, pool, baselines, values, now);
            shared.reached(pool);
            true
        }
        Ok(Err(err)) => {
            shared.lost(pool, &err.to_string());
            false
        }
        Err(_) => {
            shared.lost(pool, "no answer in REDIS_TIMEOUT_MS");
            false
        }
    }
}

/// What one merge sends: the pipeline, and what each part pushed.
struct Plan {
    pipe: redis::Pipeline,
    date: u32,
    /// The live accounts merged, by index, with their hash and the fences sent to it.
    accounts: Vec<(usize, String, Vec<u64>)>,
    /// Per key: the totals read when the merge was planned.
    totals: Vec<[u64; 5]>,
    /// The clients merged, with their hash and the fences sent to it.
    clients: Vec<(Arc<Client>, String, Vec<u64>)>,
}

impl Plan {
    fn new(
        shared: &Shared,
        pool: &KeyPool,
        clients: &Clients,
        baselines: &Baselines,
        now: i64,
    ) -> Plan {
        let day = pool.calendar().today(now);
        let mut pipe = redis::pipe();
        // One bad hash answers with its own error; the others are merged all the same.
        pipe.ignore_errors();
        let mut accounts = Vec::new();
        for (index, _) in pool.live_accounts() {
            let account = &pool.accounts()[index];
            account.roll_window(day.date, now);
            let window = account.window_ends_ms().unwrap_or(0);
            let stale = stale(account, now);
            let (mine, others) = report(account, day.date, now);
            let floor = if stale {
                0
            } else {
                account.share.floor_on(day.date)
            };
            let (b, br) = block_args(account.block_at(now));
            let (fb, fbr) = block_args(account.free_block_at(now));
            let (name, prelude) = shared.account_args(pool, index, now);
            // Read after this replica's count: a unit in it that was sent without an answer
            // from Redis has its fence here.
            let fences = shared.fences_of(&name);
            pipe.cmd("EVALSHA")
                .arg(scripts::SYNC_ACCOUNT.get_hash())
                .arg(1)
                .arg(&name)
                .arg(prelude)
                .arg(day.date)
                .arg(mine)
                .arg(floor)
                .arg(if stale { 0 } else { window })
                .arg(b)
                .arg(br)
                .arg(fb)
                .arg(fbr)
                .arg(account.limiter().ahead_ms(now))
                .arg(others)
                .arg(&fences);
            accounts.push((index, name, fences));
        }
        let mut totals = Vec::with_capacity(pool.keys().len());
        for key in pool.keys() {
            let values = key.totals.values();
            // First merge of this key: Redis is the truth, nothing local is added to it
            // (unless Redis has no record of the key, then the full totals fill it).
            let base = baselines.get(&key.fingerprint).copied().unwrap_or(values);
            let (b, br) = block_args(key.block_at(now));
            let invocation = pipe
                .cmd("EVALSHA")
                .arg(scripts::SYNC_KEY.get_hash())
                .arg(1)
                .arg(shared.names.key(&key.fingerprint));
            for (value, base) in values.iter().zip(base) {
                invocation.arg(value.saturating_sub(base));
            }
            invocation
                .arg(&values[..])
                .arg(key.last_used_ms())
                .arg(b)
                .arg(br)
                .arg(key.user_id.get().map_or("", String::as_str));
            totals.push(values);
        }
        let today = Today::new(pool.calendar(), now);
        let clients = clients
            .all()
            .iter()
            .map(|client| {
                let (hash, fences) = shared.plan_client(&mut pipe, client, today);
                (Arc::clone(client), hash, fences)
            })
            .collect();
        pipe.cmd("EVALSHA")
            .arg(scripts::HEARTBEAT.get_hash())
            .arg(1)
            .arg(shared.names.replicas())
            .arg(shared.replica());
        Plan {
            pipe,
            date: day.date,
            accounts,
            totals,
            clients,
        }
    }

    /// Sends the pipeline; scripts Redis does not know (restarted, flushed) are loaded and
    /// the pipeline sent once more.
    async fn send(&self, shared: &Shared) -> RedisResult<Vec<Value>> {
        let pipe = &self.pipe;
        shared
            .query(|mut connection| async move {
                let values: Vec<Value> = pipe.query_async(&mut connection).await?;
                if !values.iter().any(is_no_script) {
                    return Ok(values);
                }
                for script in scripts::all() {
                    script.prepare_invoke().load_async(&mut connection).await?;
                }
                pipe.query_async(&mut connection).await
            })
            .await
    }

    /// Brings the fleet's view back into the replica's.
    fn apply(
        &self,
        shared: &Shared,
        pool: &KeyPool,
        baselines: &mut Baselines,
        values: Vec<Value>,
        now: i64,
    ) {
        let mut values = values.into_iter();
        let accounts: Vec<Value> = values.by_ref().take(self.accounts.len()).collect();
        // Keys first: a user id learned from the fleet merges accounts here, and the
        // accounts' figures then land on the survivor (an absorbed account has no keys left).
        for ((key_index, pushed), value) in self.totals.iter().enumerate().zip(values.by_ref()) {
            match value {
                Value::Array(fields) => {
                    let merged = apply_key(pool, key_index, pushed, &fields, now);
                    baselines.insert(pool.keys()[key_index].fingerprint.clone(), merged);
                }
                other => warn!(
                    "Redis could not merge key {}: {}",
                    pool.keys()[key_index].id,
                    failure(&other)
                ),
            }
        }
        for ((index, name, fences), value) in self.accounts.iter().zip(accounts) {
            let index = *index;
            match redis::from_redis_value::<Vec<i64>>(value.clone()) {
                Ok(fields) => {
                    shared.fenced(name, fences);
                    apply_account(pool, index, &fields, self.date, now);
                }
                Err(_) => warn!(
                    "Redis could not merge account {}: {}",
                    pool.account_id(index),
                    failure(&value)
                ),
            }
        }
        for ((client, hash, fences), value) in self.clients.iter().zip(values.by_ref()) {
            if apply_client(client, &value, self.date) {
                shared.fenced(hash, fences);
            } else {
                warn!(
                    "Redis could not merge client {}: {}",
                    client.name(),
                    failure(&value)
                );
            }
        }
        if let Some(Ok(fleet)) = values.next().map(redis::from_redis_value::<u32>) {
            shared.heard_fleet(fleet, now);
        }
    }
}

fn block_args(block: Option<Block>) -> (i64, u8) {
    block.map_or((0, 0), |b| (b.until_ms, b.reason as u8))
}

/// A block read back from Redis, if it is in force and believable.
fn block_from(until_ms: i64, reason: i64, now: i64) -> Option<Block> {
    let reason = BlockReason::from_u8(u8::try_from(reason).ok()?)?;
    (until_ms > now && believable(until_ms, now)).then_some(Block { until_ms, reason })
}

/// Whether `account`'s window may already have ended for Redis' clock: its counts are then
/// not pushed, so they cannot outlive the reset.
fn stale(account: &Account, now: i64) -> bool {
    account
        .window_ends_ms()
        .is_some_and(|window| window <= now + SKEW_MARGIN_MS)
}

/// What this replica reports of `account` on `date`: the units it sent and what it last
/// heard the others had sent (-1 each while its window may have ended for Redis).
pub(super) fn report(account: &Account, date: u32, now: i64) -> (i64, i64) {
    if stale(account, now) {
        return (-1, -1);
    }
    let share = &account.share;
    (
        i64::from(share.mine_on(date)),
        i64::from(share.others_on(date)),
    )
}

fn is_no_script(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if err.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// What Redis answered instead of a script's result, for the log.
fn failure(value: &Value) -> String {
    match value {
        Value::ServerError(err) => format!("{} {}", err.code(), err.details().unwrap_or("")),
        other => format!("unexpected answer {other:?}"),
    }
}

/// An instant read back from Redis, if it is within [`FAR_MS`] of now.
fn believable(at_ms: i64, now: i64) -> bool {
    at_ms <= now.saturating_add(FAR_MS)
}

/// `{day, used, b, br, fb, fbr, ahead, wend, own, repaired}` from the account script,
/// each bounded before it is believed: a count by the limit, instants by [`FAR_MS`], the
/// limiter by one window (a minute and a burst).
fn apply_account(pool: &KeyPool, index: usize, fields: &[i64], date: u32, now: i64) {
    let [day, used, b, br, fb, fbr, ahead, wend, own, repaired] = fields else {
        return;
    };
    let account = &pool.accounts()[index];
    if *repaired != 0 {
        warn!(
            "Redis held values out of bounds for account {} (another program, a restore or a clock far off?): repaired",
            pool.account_id(index)
        );
    }
    if *wend > now && believable(*wend, now) {
        account.learn_window_end(*wend);
    }
    if u32::try_from(*day) == Ok(date) {
        let limit = account.daily_limit();
        let used = u32::try_from(*used).unwrap_or(u32::MAX).min(limit);
        let own = u32::try_from(*own).unwrap_or(0).min(limit);
        account.raise_used(date, used);
        account.share.raise_mine_to_redis(date, own);
        account.share.raise_others(date, used.saturating_sub(own));
    }
    for block in [block_from(*b, *br, now), block_from(*fb, *fbr, now)]
        .into_iter()
        .flatten()
    {
        account.block_until(block, now);
    }
    let (interval, tolerance) = account.limiter().shape_ms();
    let window = 60_000 + tolerance + interval;
    account
        .limiter()
        .raise_ahead(now, (*ahead).clamp(0, window));
}

/// `{5 totals, last, b, br, user, probe at, probe}` from the key script; returns the
/// fleet's totals, the key's next baseline.
fn apply_key(
    pool: &KeyPool,
    index: usize,
    pushed: &[u64; 5],
    fields: &[Value],
    now: i64,
) -> [u64; 5] {
    let number = |i: usize| {
        fields
            .get(i)
            .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
            .unwrap_or(0)
    };
    let text = |i: usize| {
        fields
            .get(i)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_default()
    };
    let key = &pool.keys()[index];
    let mut fleet = [0u64; 5];
    for (i, slot) in fleet.iter_mut().enumerate() {
        *slot = u64::try_from(number(i)).unwrap_or(0);
    }
    // Relative, so increments made while the merge was on its way are kept.
    key.totals.adjust(pushed, &fleet);
    let last = number(5);
    if last > key.last_used_ms() && last <= now {
        key.set_last_used(last, key.last_pick.load(Relaxed));
    }
    if let Some(block) = block_from(number(6), number(7), now) {
        pool.block(index, block.until_ms, block.reason, now);
    }
    let user = text(8);
    if !user.is_empty() && key.user_id.get().is_none() {
        pool.learn_user(index, &user, now);
    }
    let probe_at = number(9);
    if probe_at > key.probe.at_ms() {
        if let Some((outcome, next)) = probes::decode(&text(10)) {
            pool.apply_probe(index, &outcome, probe_at, next);
        }
    }
    fleet
}
