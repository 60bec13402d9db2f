//! Replicas of the binary on one Redis and one upstream, for the tests of several
//! replicas, and what they are asked and show.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use super::*;

pub const FREE: &str = "qwen/qwen3-coder:free";
pub const PAID: &str = "openai/gpt-4o";

/// Replicas of the binary on one Redis and one upstream, each with a state file of its own.
pub struct Fleet {
    pub replicas: Vec<Running>,
    pub states: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    pub async fn start(
        n: usize,
        upstream: &Upstream,
        redis_url: &str,
        vars: &[(&str, &str)],
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let states = (0..n)
            .map(|i| dir.path().join(format!("state{i}.json")))
            .collect();
        let mut fleet = Fleet {
            replicas: Vec::new(),
            states,
            _dir: dir,
        };
        fleet.launch(upstream, redis_url, vars).await;
        fleet
    }

    /// Starts every replica (again), with fresh state files.
    pub async fn launch(&mut self, upstream: &Upstream, redis_url: &str, vars: &[(&str, &str)]) {
        self.replicas.clear();
        let mut all = vec![("REDIS_URL", redis_url), ("STATE_FLUSH_INTERVAL", "0")];
        all.extend_from_slice(vars);
        for state in &self.states {
            let _ = std::fs::remove_file(state);
            let replica = Running::start(&upstream.base_url(), state, &all).await;
            self.replicas.push(replica);
        }
    }

    /// Stops replica `i` in order (SIGTERM: it writes its state file) and starts it again
    /// with the same state file and `vars`.
    pub async fn restart(
        &mut self,
        i: usize,
        upstream: &Upstream,
        redis_url: &str,
        vars: &[(&str, &str)],
    ) {
        self.replicas[i].signal("TERM");
        self.replicas[i].wait(Duration::from_secs(10));
        let mut all = vec![("REDIS_URL", redis_url), ("STATE_FLUSH_INTERVAL", "0")];
        all.extend_from_slice(vars);
        self.replicas[i] = Running::start(&upstream.base_url(), &self.states[i], &all).await;
    }

    /// Waits until every replica's `/metrics` holds `line`.
    pub async fn all_metrics_show(&self, line: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let mut all = true;
            for replica in &self.replicas {
                all &= text_of(replica, "/metrics").await.contains(line);
            }
            if all {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `total` chats for `model` with the proxy key, `at_once` at a time, spread over the
    /// replicas in turn; their statuses.
    pub async fn chats(&self, model: &str, total: usize, at_once: usize) -> Vec<u16> {
        let answers = self.chats_as(PROXY_KEY, model, total, at_once).await;
        answers.iter().map(|a| a.status).collect()
    }

    /// `total` chats for `model` with bearer `key`, `at_once` at a time, spread over the
    /// replicas in turn; their answers.
    pub async fn chats_as(
        &self,
        key: &str,
        model: &str,
        total: usize,
        at_once: usize,
    ) -> Vec<Answer> {
        let mut answers = Vec::new();
        let mut sent = 0;
        while sent < total {
            let mut tasks = tokio::task::JoinSet::new();
            for i in sent..(sent + at_once).min(total) {
                let url = self.replicas[i % self.replicas.len()].url("/api/v1/chat/completions");
                tasks.spawn(chat_as(url, key.to_owned(), model.to_owned()));
            }
            sent += tasks.len();
            answers.extend(tasks.join_all().await);
        }
        answers
    }

    /// Waits until every replica's /key_status satisfies `check`.
    pub async fn all_show(
        &self,
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let mut all = true;
            for replica in &self.replicas {
                all &= check(&replica.key_status().await);
            }
            if all {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn chat_at(url: String, model: String) -> u16 {
    chat_as(url, PROXY_KEY.to_owned(), model).await.status
}

/// A chat for `model` at `url` with bearer `key`.
pub async fn chat_as(url: String, key: String, model: String) -> Answer {
    post_json(
        &url,
        &key,
        &format!(r#"{{"model":"{model}","messages":[]}}"#),
    )
    .await
}

pub async fn text_of(replica: &Running, path: &str) -> String {
    send(
        request("GET", &replica.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .text()
}

pub fn used(status: &serde_json::Value, secret: &str) -> u64 {
    key_in(status, secret)["daily_used"].as_u64().unwrap()
}

pub fn chats_seen(upstream: &Upstream) -> Vec<Seen> {
    upstream
        .requests()
        .into_iter()
        .filter(|s| s.path_and_query.ends_with("/chat/completions"))
        .collect()
}
