//! The proxy binary as a child process, for tests about processes (signals,
//! restarts, memory of the proxy alone).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use super::*;

/// The release binary running as a process of its own, its stderr kept in a file.
pub struct Running {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Running {
    /// Starts the binary with the test defaults plus `vars` on a port the proxy itself
    /// binds (port 0, no race with other tests), and waits until it says where it listens.
    pub async fn start(upstream: &str, state_file: &Path, vars: &[(&str, &str)]) -> Running {
        Self::launch(Self::command(upstream, state_file, vars)).await
    }

    /// Like [`Self::start`], in `dir` and with the key list only in `dir/.env` (so a
    /// reload can change it).
    pub async fn start_in(
        dir: &Path,
        upstream: &str,
        state_file: &Path,
        vars: &[(&str, &str)],
    ) -> Running {
        let mut command = Self::command(upstream, state_file, vars);
        command.current_dir(dir).env_remove("OPENROUTER_KEYS");
        Self::launch(command).await
    }

    /// Like [`Self::start`], with `toml` as its `CONFIG_FILE` (`dir/proxy.toml`, so a test can
    /// rewrite it for a reload) and its state file beside it in the returned directory.
    pub async fn with_config_file(
        upstream: &str,
        toml: &str,
        vars: &[(&str, &str)],
    ) -> (Running, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, toml).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let mut all = vec![("CONFIG_FILE", file.as_str())];
        all.extend_from_slice(vars);
        let proxy = Running::start(upstream, &dir.path().join("state.json"), &all).await;
        (proxy, dir)
    }

    fn command(upstream: &str, state_file: &Path, vars: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_openrouter-proxy"));
        command
            .env_clear()
            .env("PROXY_API_KEY", PROXY_KEY)
            .env("OPENROUTER_KEYS", format!("{KEY_A}:10,{KEY_B}:10"))
            .env("OPENROUTER_BASE_URL", upstream)
            .env("UVICORN_HOST", "127.0.0.1")
            .env("UVICORN_PORT", "0")
            .env("STATE_FILE", state_file)
            .env("RETRY_BACKOFF", "0")
            .env("KEY_PROBE_INTERVAL", "0")
            .env("FREE_BURST", "100")
            .envs(vars.iter().copied());
        command
    }

    async fn launch(mut command: Command) -> Running {
        let log = tempfile::NamedTempFile::new()
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        command.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let child = command.spawn().unwrap();
        let mut running = Running {
            child,
            port: 0,
            log,
        };
        running.port = listening_port(&running.log)
            .await
            .unwrap_or_else(|| panic!("the proxy did not start: {}", running.log_text()));
        running
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn chat(&self, model: &str) -> Answer {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        send(
            request("POST", &self.url("/api/v1/chat/completions"))
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
    }

    pub async fn key_status(&self) -> serde_json::Value {
        send(
            request("GET", &self.url("/key_status"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .json()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the proxy process alone, in MiB.
    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib / 1024
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 5 s for the log to hold `text`; fails the test, showing the log, if not.
    pub async fn wait_for_log(&self, text: &str) {
        let logged = eventually(Duration::from_secs(5), || self.log_text().contains(text)).await;
        assert!(logged, "{text:?} was not logged:\n{}", self.log_text());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
