//! Durable key state: today's free-model counts, blocks and lifetime totals
//! survive restarts in a JSON file, so a redeploy does not hammer keys that
//! are already exhausted for the day.
//!
//! Keys are named by a SHA-256 prefix, never stored. The file is written
//! atomically (temporary file, fsync, rename, fsync of the directory) by a
//! background task, never on the request path. A file that cannot be read or
//! written is a warning, never a reason to stop serving.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::keys::{now_ms, Block, BlockReason, KeyPool};

const VERSION: u32 = 1;
const WRITE_WARNING_EVERY: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct StateDocument {
    version: u32,
    saved_at: String,
    keys: Vec<KeyRecord>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct KeyRecord {
    /// SHA-256 prefix of the key.
    key: String,
    /// The quota day (`yyyymmdd` in `TIMEZONE`) `daily_used` belongs to.
    day: u32,
    daily_used: u32,
    /// The block of every request (older files: any block, whatever its scope).
    block: Option<BlockRecord>,
    /// The block of free-model requests only (absent in older files).
    #[serde(default)]
    free_block: Option<BlockRecord>,
    /// requests, successes, rate_limited, errors, unreached (older files: the first four).
    totals: Vec<u64>,
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

/// Every key's record at `now`: what a write stores, and what decides whether one is due.
fn records(pool: &KeyPool, now: i64) -> Vec<KeyRecord> {
    let day = pool.calendar().today(now);
    pool.keys()
        .iter()
        .map(|key| KeyRecord {
            key: key.fingerprint.clone(),
            day: day.date,
            daily_used: key.used_on(day.date),
            block: key.paid_block_at(now).map(block_record),
            free_block: key.free_block_at(now).map(block_record),
            totals: key.totals.values().to_vec(),
        })
        .collect()
}

fn document(pool: &KeyPool, keys: Vec<KeyRecord>, now: i64) -> String {
    let document = StateDocument {
        version: VERSION,
        saved_at: pool.calendar().rfc3339(now),
        keys,
    };
    serde_json::to_string_pretty(&document).expect("the state document serialises")
}

/// The current state of every key, as the file stores it.
///
/// # Panics
/// Never: the document holds only strings and numbers, which always serialise.
#[must_use]
pub fn render(pool: &KeyPool) -> String {
    let now = now_ms();
    document(pool, records(pool, now), now)
}

/// Restores the state file at `path` into `pool`: today's counts, blocks still in
/// force, and totals, for keys that are still configured.
pub fn load(path: &Path, pool: &KeyPool) {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
        Err(err) => {
            warn!(
                "state file {} cannot be read ({err}); starting with fresh key state",
                path.display()
            );
            return;
        }
    };
    let document: StateDocument = match serde_json::from_slice(&text) {
        Ok(document) => document,
        Err(err) => {
            let aside = with_suffix(path, ".corrupt");
            let kept = fs::rename(path, &aside).map_or_else(
                |e| format!("could not be moved aside: {e}"),
                |()| format!("kept as {}", aside.display()),
            );
            warn!(
                "state file {} is corrupt ({err}); {kept}; starting with fresh key state",
                path.display()
            );
            return;
        }
    };
    let now = now_ms();
    let today = pool.calendar().today(now).date;
    let mut restored = 0;
    for record in &document.keys {
        let Some(index) = pool.keys().iter().position(|k| k.fingerprint == record.key) else {
            continue;
        };
        let used = if record.day == today {
            record.daily_used
        } else {
            0
        };
        let blocks: Vec<Block> = [&record.block, &record.free_block]
            .into_iter()
            .flatten()
            .filter_map(|b| {
                let reason = BlockReason::parse(&b.reason)?;
                (b.until_ms > now).then_some(Block {
                    until_ms: b.until_ms,
                    reason,
                })
            })
            .collect();
        pool.restore(index, today, used, &blocks, &record.totals);
        restored += 1;
    }
    info!(
        "restored the state of {restored} key(s) from {}",
        path.display()
    );
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

/// Keeps the state file up to date from a background task.
pub struct Persistence {
    app: Arc<App>,
    path: PathBuf,
    /// What the last successful write stored; `None` before the first one.
    last_written: Option<Vec<KeyRecord>>,
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
        let keys = records(&self.app.keys, now);
        if self.last_written.as_ref() == Some(&keys) {
            return;
        }
        let path = self.path.clone();
        let contents = document(&self.app.keys, records(&self.app.keys, now), now);
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &contents)).await;
        match result {
            Ok(Ok(())) => self.last_written = Some(keys),
            Ok(Err(err)) => self.warn(&err.to_string()),
            Err(err) => self.warn(&err.to_string()),
        }
    }

    fn warn(&mut self, err: &str) {
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WRITE_WARNING_EVERY)
        {
            warn!(
                "state file {} cannot be written ({err}); serving from memory",
                self.path.display()
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
