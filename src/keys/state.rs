//! Durable key state: today's free-model counts, blocks and lifetime totals
//! survive restarts in a JSON file, so a redeploy does not hammer keys that
//! are already exhausted for the day.
//!
//! Keys are named by a SHA-256 prefix, never stored. The file is written
//! atomically (temporary file, fsync, rename, fsync of the directory) by a
//! background task, never on the request path. A file that cannot be read or
//! written is a warning, never a reason to stop serving.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::clients::persist::{self, ClientRecord};
use crate::config::absolute;
use crate::keys::{now_ms, Block, BlockReason, KeyPool, Usage, UsageCounters};

const VERSION: u32 = 2;
/// Far above what any real key list writes (about 300 bytes a key).
const MAX_STATE_FILE_BYTES: u64 = 16 << 20;
const WRITE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The file as read (any version this proxy ever wrote).
#[derive(Deserialize)]
struct StateDocument {
    keys: Vec<KeyRecord>,
    /// Absent in version 1 files, which kept counts per key.
    #[serde(default)]
    accounts: Vec<AccountRecord>,
    #[serde(default)]
    fleet: Option<FleetMemory>,
    #[serde(default)]
    clients: Vec<ClientRecord>,
}

/// What a replica of a fleet (with `REDIS_URL`) remembers across restarts: its name, under
/// which Redis holds what it sent, and the fleet's size, its share while Redis is away.
#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
pub struct FleetMemory {
    pub replica: String,
    pub replicas: u32,
}

/// The file as written: a snapshot, borrowed, with the format version and the time.
#[derive(Serialize)]
struct Written<'a> {
    version: u32,
    saved_at: String,
    keys: &'a [KeyRecord],
    accounts: &'a [AccountRecord],
    #[serde(skip_serializing_if = "Option::is_none")]
    fleet: Option<&'a FleetMemory>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    clients: &'a [ClientRecord],
}

#[derive(Serialize, Deserialize, PartialEq)]
struct KeyRecord {
    /// SHA-256 prefix of the key.
    key: String,
    /// The key's own block (version 1 files: any block, whatever its scope).
    block: Option<BlockRecord>,
    /// requests, successes, rate_limited, errors, unreached (older files: the first four).
    totals: Vec<u64>,
    /// The OpenRouter user its answers named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// Version 1 only: the quota day and count, now the account's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    daily_used: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    free_block: Option<BlockRecord>,
    /// Tokens and cost: today's and lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<UsageRecord>,
}

/// Tokens and cost as `[prompt tokens, completion tokens, nano-USD]`, today's (the quota
/// day `day`) and lifetime.
#[derive(Serialize, Deserialize, PartialEq)]
struct UsageRecord {
    day: u32,
    today: [u64; 3],
    lifetime: [u64; 3],
}

impl UsageRecord {
    /// `None` while nothing was ever used (older files and idle keys stay as they were).
    fn of(counters: &UsageCounters, date: u32) -> Option<UsageRecord> {
        let lifetime = counters.lifetime();
        if lifetime == Usage::default() {
            return None;
        }
        Some(UsageRecord {
            day: date,
            today: counters.today(date).parts(),
            lifetime: lifetime.parts(),
        })
    }

    /// Into `counters`; today's part only if it is of `today`.
    fn restore(&self, counters: &UsageCounters, today: u32) {
        let kept = if self.day == today {
            Usage::from_parts(self.today)
        } else {
            Usage::default()
        };
        counters.restore(today, kept, Usage::from_parts(self.lifetime));
    }
}

/// One account, named by its configured name or else by its keys' SHA-256 prefixes.
#[derive(Serialize, Deserialize, PartialEq)]
struct AccountRecord {
    name: Option<String>,
    keys: Vec<String>,
    /// The quota day (`yyyymmdd` in `TIMEZONE`) `daily_used` belongs to.
    day: u32,
    daily_used: u32,
    /// Of `daily_used`, what this replica sent itself (with `REDIS_URL`).
    #[serde(default, skip_serializing_if = "is_zero")]
    sent_here: u32,
    /// OpenRouter's reset instant of the count's window (epoch ms), 0 if it named none.
    #[serde(default)]
    window_ends_ms: i64,
    free_block: Option<BlockRecord>,
    block: Option<BlockRecord>,
    /// The grouping came from OpenRouter's answers (one `user_id`), not the configuration.
    #[serde(default)]
    learned: bool,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<UsageRecord>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, PartialEq)]
struct BlockRecord {
    until_ms: i64,
    reason: String,
}

fn block_record(block: Block) -> BlockRecord {
    BlockRecord {
        until_ms: block.until_ms,
        reason: block.reason.as_str().to_owned(),
    }
}

impl BlockRecord {
    /// The block, if its reason is known and it is still in force at `now`.
    fn in_force(&self, now: i64) -> Option<Block> {
        let reason = BlockReason::parse(&self.reason)?;
        (self.until_ms > now).then_some(Block {
            until_ms: self.until_ms,
            reason,
        })
    }
}

/// What a write stores, and what decides whether one is due (the time of writing aside).
#[derive(PartialEq)]
struct Snapshot {
    keys: Vec<KeyRecord>,
    accounts: Vec<AccountRecord>,
    fleet: Option<FleetMemory>,
    clients: Vec<ClientRecord>,
}

fn snapshot(app: &App, now: i64) -> Snapshot {
    let pool = &*app.keys();
    let fleet = fleet_memory(app);
    let day = pool.calendar().today(now);
    let keys = pool
        .keys()
        .iter()
        .map(|key| KeyRecord {
            key: key.fingerprint.clone(),
            block: key.block_at(now).map(block_record),
            totals: key.totals.values().to_vec(),
            user_id: key.user_id.get().cloned(),
            day: None,
            daily_used: None,
            free_block: None,
            usage: UsageRecord::of(&key.spent, day.date),
        })
        .collect();
    let accounts = pool
        .live_accounts()
        .into_iter()
        .map(|(index, members)| {
            let account = &pool.accounts()[index];
            AccountRecord {
                name: account.name.clone(),
                keys: members
                    .iter()
                    .map(|&k| pool.keys()[k].fingerprint.clone())
                    .collect(),
                day: day.date,
                daily_used: account.used_on(day.date),
                sent_here: account.share.mine_on(day.date),
                window_ends_ms: account.window_ends_ms().unwrap_or(0),
                free_block: account.free_block_at(now).map(block_record),
                block: account.block_at(now).map(block_record),
                learned: account.learned.load(Relaxed),
                user_id: account.user_id.get().cloned(),
                usage: UsageRecord::of(&account.spent, day.date),
            }
        })
        .collect();
    Snapshot {
        keys,
        accounts,
        fleet,
        clients: persist::records(&app.clients(), day.date),
    }
}

fn document(pool: &KeyPool, snapshot: &Snapshot, now: i64) -> String {
    let written = Written {
        version: VERSION,
        saved_at: pool.calendar().rfc3339(now),
        keys: &snapshot.keys,
        accounts: &snapshot.accounts,
        fleet: snapshot.fleet.as_ref(),
        clients: &snapshot.clients,
    };
    serde_json::to_string_pretty(&written).expect("the state document serialises")
}

/// The current state of every key and account, as the file stores it.
///
/// # Panics
/// Never: the document holds only strings and numbers, which always serialise.
#[must_use]
pub fn render(app: &App) -> String {
    let now = now_ms();
    document(&app.keys(), &snapshot(app, now), now)
}

/// Restores the state file at `path` into `app`: learned accounts, today's counts,
/// blocks still in force, and totals, for keys that are still configured, and the
/// clients' counts by name. Returns what it remembered of the fleet.
pub fn load(path: &Path, app: &App) -> Option<FleetMemory> {
    let document = read_document(path)?;
    let pool = &*app.keys();
    let now = now_ms();
    // Linear in the file and the pool, however many records there are.
    let by_fingerprint: HashMap<&str, usize> = pool
        .keys()
        .iter()
        .enumerate()
        .map(|(index, key)| (key.fingerprint.as_str(), index))
        .collect();
    let index_of = |fingerprint: &str| by_fingerprint.get(fingerprint).copied();
    // Groupings first, so counts land on the accounts they belong to now.
    restore_groupings(pool, &document, &index_of, now);
    let restored = restore_keys(pool, &document.keys, &index_of, now);
    restore_accounts(pool, &document.accounts, &index_of, now);
    persist::restore(
        &app.clients(),
        &document.clients,
        pool.calendar().today(now).date,
    );
    info!(
        "restored the state of {restored} key(s) from {}",
        path.display()
    );
    document.fleet
}

/// Learned accounts and the user ids OpenRouter named, merged again.
fn restore_groupings(
    pool: &KeyPool,
    document: &StateDocument,
    index_of: &impl Fn(&str) -> Option<usize>,
    now: i64,
) {
    for record in &document.accounts {
        let Some(user) = record.user_id.as_deref().filter(|_| record.learned) else {
            continue;
        };
        for index in record.keys.iter().filter_map(|k| index_of(k)) {
            pool.learn_user(index, user, now);
        }
    }
    for record in &document.keys {
        if let (Some(index), Some(user)) = (index_of(&record.key), &record.user_id) {
            pool.learn_user(index, user, now);
        }
    }
}

/// Each still-configured key's blocks and totals (and, from version 1 files, its count,
/// which is now its account's); returns how many keys were found.
fn restore_keys(
    pool: &KeyPool,
    records: &[KeyRecord],
    index_of: &impl Fn(&str) -> Option<usize>,
    now: i64,
) -> usize {
    let today = pool.calendar().today(now).date;
    let mut restored = 0;
    for record in records {
        let Some(index) = index_of(&record.key) else {
            continue;
        };
        restored += 1;
        let blocks = [&record.block, &record.free_block]
            .into_iter()
            .flatten()
            .filter_map(|b| b.in_force(now));
        for block in blocks {
            pool.block(index, block.until_ms, block.reason, now);
        }
        pool.keys()[index].restore_totals(&record.totals);
        if let Some(usage) = &record.usage {
            usage.restore(&pool.keys()[index].spent, today);
        }
        // Version 1: the key's count is its account's (the larger of its keys', never a sum).
        if record.day == Some(today) {
            pool.account_of(index)
                .restore(today, (record.daily_used.unwrap_or(0), 0), &[], 0);
        }
    }
    restored
}

/// Each account's count for today, its blocks in force and OpenRouter's reset instant.
fn restore_accounts(
    pool: &KeyPool,
    records: &[AccountRecord],
    index_of: &impl Fn(&str) -> Option<usize>,
    now: i64,
) {
    let today = pool.calendar().today(now).date;
    for record in records {
        let Some(index) = record.keys.iter().find_map(|k| index_of(k)) else {
            continue;
        };
        let used = if record.day == today {
            (record.daily_used, record.sent_here)
        } else {
            (0, 0)
        };
        let blocks: Vec<Block> = [&record.free_block, &record.block]
            .into_iter()
            .flatten()
            .filter_map(|b| b.in_force(now))
            .collect();
        let window = if record.window_ends_ms > now {
            record.window_ends_ms
        } else {
            0
        };
        pool.account_of(index).restore(today, used, &blocks, window);
        if let Some(usage) = &record.usage {
            usage.restore(&pool.account_of(index).spent, today);
        }
    }
}

/// The parsed state file, or `None` (with a warning where it matters) when there is none
/// or it cannot be used.
fn read_document(path: &Path) -> Option<StateDocument> {
    // Looked at before it is opened: a FIFO would block startup for ever, a link could
    // point anywhere, and a huge file would take minutes to match.
    match fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Ok(meta) if !meta.file_type().is_file() => {
            warn!(
                "state file {} cannot be read: it is not a regular file (a link, directory, FIFO or device); starting with fresh key state",
                path.display()
            );
            return None;
        }
        Ok(meta) if meta.len() > MAX_STATE_FILE_BYTES => {
            warn!(
                "state file {} cannot be read: it is {} bytes, more than the {MAX_STATE_FILE_BYTES} a state file of this proxy can be; starting with fresh key state",
                path.display(),
                meta.len()
            );
            return None;
        }
        _ => {}
    }
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            warn!(
                "state file {} cannot be read ({err}); starting with fresh key state",
                path.display()
            );
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(document) => Some(document),
        Err(err) => {
            // Where and what kind of problem, never the error's text: it can quote the file.
            let err = format!(
                "{:?} error at line {} column {}",
                err.classify(),
                err.line(),
                err.column()
            );
            let aside = with_suffix(path, ".corrupt");
            let kept = fs::rename(path, &aside).map_or_else(
                |e| format!("could not be moved aside: {e}"),
                |()| format!("kept as {}", aside.display()),
            );
            warn!(
                "state file {} is corrupt ({err}); {kept}; starting with fresh key state",
                path.display()
            );
            None
        }
    }
}

/// Whether the state file can be written where it is configured: a file is created and
/// removed beside it (the state is written to a temporary file there and renamed over it).
/// Checked before the port opens, so a state that will not be kept is said at once.
///
/// # Errors
/// Why nothing can be written there, with the absolute path of the directory.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let path = absolute(path);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let probe = dir.join(format!(
        ".openrouter-proxy-write-check-{}",
        std::process::id()
    ));
    match fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(err) => Err(format!(
            "STATE_FILE {}: cannot write in {} ({err}): counts and blocks will not survive a restart; serving from memory",
            path.display(),
            dir.display()
        )),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Serialises writers: a write already running on a blocking thread (its task aborted at
/// shutdown) finishes before the final flush renames its newer contents into place.
static WRITING: Mutex<()> = Mutex::new(());

/// A temporary name beside `path` that no other writer uses: process id and a random part.
fn temporary_name(path: &Path) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    with_suffix(path, &format!(".{}.{random:016x}.tmp", std::process::id()))
}

/// Writes `contents` to `path` atomically: a temporary file beside it, created exclusively
/// (never through an existing file or symlink), fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let _writing = WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Never replace something that is not a state file (a link is replaced, not followed,
    // by the rename below; a directory or FIFO is left alone).
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_file() && !meta.file_type().is_symlink() {
            return Err(std::io::Error::other("it is not a regular file"));
        }
    }
    let temporary = temporary_name(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(err) = written.and_then(|()| fs::rename(&temporary, path)) {
        let _ = fs::remove_file(&temporary);
        return Err(err);
    }
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(directory)?.sync_all()
}

/// What this replica remembers of its fleet, with `REDIS_URL` and once the fleet's size
/// was known.
#[must_use]
pub fn fleet_memory(app: &App) -> Option<FleetMemory> {
    let shared = app.shared.as_ref()?;
    let replicas = shared.fleet();
    (replicas > 0).then(|| FleetMemory {
        replica: shared.replica().to_owned(),
        replicas,
    })
}

/// Keeps the state file up to date from a background task.
pub struct Persistence {
    app: Arc<App>,
    path: PathBuf,
    /// What the last successful write stored; `None` before the first one.
    last_written: Option<Snapshot>,
    last_warning: Option<Instant>,
}

impl Persistence {
    #[must_use]
    pub fn new(app: Arc<App>, path: PathBuf) -> Self {
        Persistence {
            app,
            path,
            last_written: None,
            last_warning: None,
        }
    }

    /// Writes the state if a key's counts, blocks or totals changed since the last write
    /// (the time of writing alone is no change). Runs the file I/O off the async workers.
    pub async fn flush(&mut self) {
        let now = now_ms();
        let pool = self.app.keys();
        let state = snapshot(&self.app, now);
        if self.last_written.as_ref() == Some(&state) {
            return;
        }
        let path = self.path.clone();
        let contents = document(&pool, &state, now);
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &contents)).await;
        match result {
            Ok(Ok(())) => {
                self.last_written = Some(state);
                self.app.state_kept.store(true, Relaxed);
            }
            Ok(Err(err)) => self.warn(&err.to_string()),
            Err(err) => self.warn(&err.to_string()),
        }
    }

    fn warn(&mut self, err: &str) {
        self.app.state_kept.store(false, Relaxed);
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WRITE_WARNING_EVERY)
        {
            warn!(
                "STATE_FILE {} cannot be written ({err}); serving from memory: counts and blocks will not survive a restart",
                absolute(&self.path).display()
            );
            self.last_warning = Some(Instant::now());
        }
    }

    /// Flushes every `interval` until dropped (0 = never; only the final flush writes).
    pub async fn run(&mut self, interval: Duration) {
        if interval.is_zero() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(interval).await;
            self.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_planted_beside_the_state_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let state = dir.path().join("state.json");
        // The temporary name older versions used.
        std::os::unix::fs::symlink(&victim, with_suffix(&state, ".tmp")).unwrap();
        write_atomic(&state, "{}").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&state).unwrap(), "{}");
    }

    #[test]
    fn overlapping_writers_never_leave_a_torn_file_or_a_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let state = state.clone();
                std::thread::spawn(move || {
                    for round in 0..25 {
                        let contents = format!(
                            "{{\"writer\":{writer},\"round\":{round},\"pad\":\"{}\"}}",
                            "x".repeat(4096 * writer)
                        );
                        write_atomic(&state, &contents).unwrap();
                        let seen = fs::read_to_string(&state).unwrap();
                        serde_json::from_str::<serde_json::Value>(&seen).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
