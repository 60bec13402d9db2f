//! A real `redis-server` for the tests of several replicas: started on a loopback
//! port the OS picked, persistence off, in a directory of its own. Where it is not
//! installed the tests that need it say so and do not run, unless `REQUIRE_REDIS=1`
//! (set by `.ci/run`) makes that a failure.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    /// With TLS: the port that speaks it (beside the plain one the test reads through),
    /// and redis-server's `--tls-*` arguments.
    pub tls_port: u16,
    tls_args: Vec<std::ffi::OsString>,
}

impl RedisServer {
    /// A fresh server (with `requirepass` when `password` is given), or `None` (after saying
    /// why) when `redis-server` is not installed and `REQUIRE_REDIS` is not set.
    pub fn start(test: &str, password: Option<&str>) -> Option<RedisServer> {
        RedisServer::start_with(test, password, Vec::new())
    }

    /// A fresh server that also speaks TLS on [`Self::tls_port`], with the certificate and
    /// key in `cert` and `key` (clients are not asked for certificates).
    pub fn start_tls(
        test: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Option<RedisServer> {
        let args = [
            ("--tls-cert-file", cert),
            ("--tls-key-file", key),
            ("--tls-ca-cert-file", ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.into(), path.as_os_str().to_owned()])
        .chain(["--tls-auth-clients".into(), "no".into()])
        .collect();
        RedisServer::start_with(test, None, args)
    }

    fn start_with(
        test: &str,
        password: Option<&str>,
        tls_args: Vec<std::ffi::OsString>,
    ) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("REQUIRE_REDIS").is_none(),
                "REQUIRE_REDIS is set but redis-server is not installed"
            );
            // Written to the process' stderr itself, not through `eprintln!`, which the test
            // harness captures and shows only for failing tests: a skip must be seen.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server); this test did not run"
            );
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            password: password.map(str::to_owned),
            dir: tempfile::tempdir().unwrap(),
            tls_port: 0,
            tls_args,
        };
        server.launch();
        Some(server)
    }

    /// Starts the server again (empty) on its port, after [`Self::kill`] or the first time.
    pub fn launch(&mut self) {
        for _ in 0..20 {
            if self.port == 0 {
                // The OS picks the port; redis-server cannot be handed a bound socket.
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                self.port = probe.local_addr().unwrap().port();
            }
            let mut command = Command::new("redis-server");
            command
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(password) = &self.password {
                command.args(["--requirepass", password]);
            }
            if !self.tls_args.is_empty() {
                if self.tls_port == 0 {
                    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    self.tls_port = probe.local_addr().unwrap().port();
                }
                command
                    .args(["--tls-port", &self.tls_port.to_string()])
                    .args(&self.tls_args);
            }
            let child = command.spawn().unwrap();
            self.child = Some(child);
            if self.wait_ready() {
                return;
            }
            self.kill();
        }
        panic!("redis-server did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().unwrap().is_some() {
                    return false; // the port was taken meanwhile
                }
            }
            if self
                .connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the server at once (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The `rediss://` URL of the TLS port, by IP (the test certificate names 127.0.0.1).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls_port)
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// Every key and every value it holds, as text.
    pub fn dump(&self) -> String {
        let mut connection = self.connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
        let mut out = String::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
            let values: Vec<String> = match kind.as_str() {
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query(&mut connection)
                    .unwrap(),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut connection)
                    .unwrap(),
                "string" => vec![redis::cmd("GET").arg(&key).query(&mut connection).unwrap()],
                other => vec![format!("({other})")],
            };
            let _ = writeln!(out, "{key} = {values:?}");
        }
        out
    }

    /// The fleet's count in the account hash whose name contains `name_part` (the larger
    /// of OpenRouter's floor and the sum of what each replica sent); 0 if there is none.
    pub fn shared_count(&self, name_part: &str) -> u64 {
        let mut connection = self.connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*{a:*")
            .query(&mut connection)
            .unwrap();
        let Some(key) = keys.iter().find(|k| k.contains(name_part)) else {
            return 0;
        };
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query(&mut connection)
            .unwrap();
        let number = |v: &str| v.parse::<u64>().unwrap_or(0);
        let sent: u64 = fields
            .iter()
            .filter(|(f, _)| f.starts_with("u:"))
            .map(|(_, v)| number(v))
            .sum();
        let floor = fields
            .iter()
            .find(|(f, _)| f == "floor")
            .map_or(0, |(_, v)| number(v));
        sent.max(floor)
    }

    /// Runs one command (as `redis-cli` would) and returns its answer.
    pub fn command(&self, args: &[&str]) -> redis::Value {
        let mut connection = self.connection().unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut connection).unwrap()
    }

    /// Pauses the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused server (SIGCONT): it answers everything sent meanwhile.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// The directory it runs in (for its own files).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
