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
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::keys::{now_ms, Block, BlockReason, KeyPool};
use crate::proxy::App;

const VERSION: u32 = 1;
const WRITE_WARNING_EVERY: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
struct StateDocument {
    version: u32,
    saved_at: String,
    keys: Vec<KeyRecord>,
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    /// SHA-256 prefix of the key.
    key: String,
    /// The quota day (`yyyymmdd` in `TIMEZONE`) `daily_used` belongs to.
    day: u32,
    daily_used: u32,
    block: Option<BlockRecord>,
    totals: [u64; 4],
}

#[derive(Serialize, Deserialize)]
struct BlockRecord {
    until_ms: i64,
    reason: String,
}

/// The current state of every key, as the file stores it.
///
/// # Panics
/// Never: the document holds only strings and numbers, which always serialise.
#[must_use]
pub fn render(pool: &KeyPool) -> String {
    let now = now_ms();
    let day = pool.calendar().today(now);
    let keys = pool
        .keys()
        .iter()
        .map(|key| KeyRecord {
            key: key.fingerprint.clone(),
            day: day.date,
            daily_used: key.used_on(day.date),
            block: key.block_at(now).map(|b| BlockRecord {
                until_ms: b.until_ms,
                reason: b.reason.as_str().to_owned(),
            }),
            totals: key.totals.values(),
        })
        .collect();
    let document = StateDocument {
        version: VERSION,
        saved_at: pool.calendar().rfc3339(now),
        keys,
    };
    serde_json::to_string_pretty(&document).expect("the state document serialises")
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
        let block = record.block.as_ref().and_then(|b| {
            let reason = BlockReason::parse(&b.reason)?;
            (b.until_ms > now).then_some(Block {
                until_ms: b.until_ms,
                reason,
            })
        });
        pool.restore(index, today, used, block, record.totals);
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

/// Writes `contents` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let temporary = with_suffix(path, ".tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    drop(file);
    if let Err(err) = fs::rename(&temporary, path) {
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
    last_written: String,
    last_warning: Option<Instant>,
}

impl Persistence {
    #[must_use]
    pub fn new(app: Arc<App>, path: PathBuf) -> Self {
        Persistence {
            app,
            path,
            last_written: String::new(),
            last_warning: None,
        }
    }

    /// Writes the state if it changed since the last write. Runs the file I/O off the async workers.
    pub async fn flush(&mut self) {
        let contents = render(&self.app.keys);
        if contents == self.last_written {
            return;
        }
        let path = self.path.clone();
        let written = contents.clone();
        let result = tokio::task::spawn_blocking(move || write_atomic(&path, &written)).await;
        match result {
            Ok(Ok(())) => self.last_written = contents,
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
