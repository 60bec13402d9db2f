//! Starting the processes a benchmark measures: the mock upstream (this same
//! executable with `--mock`) and the proxy as users run it, and reading their
//! memory and descriptors from /proc.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The proxy key every benchmark client sends.
pub const PROXY_KEY: &str = "bench-proxy-key";

/// Ten keys and limits high enough that no request is ever throttled; no state file, no probes.
pub fn proxy_env(command: &mut Command, upstream: &str) {
    let keys: Vec<String> = (0..10)
        .map(|i| format!("sk-or-v1-bench-key-{i:04}:4000000000"))
        .collect();
    command
        .env_clear()
        .env("PROXY_API_KEY", PROXY_KEY)
        .env("OPENROUTER_KEYS", keys.join(","))
        .env("OPENROUTER_BASE_URL", upstream)
        .env("FREE_RPM", "4000000000")
        .env("FREE_BURST", "1000000000")
        .env("UVICORN_HOST", "127.0.0.1")
        .env("STATE_FILE", "")
        .env("KEY_PROBE_INTERVAL", "0");
    // Experiments reach the proxy through E2E_PROXY_ENV, e.g. "UVICORN_LOG_LEVEL=warning,MALLOC_ARENA_MAX=1".
    for pair in std::env::var("E2E_PROXY_ENV")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((name, value)) = pair.split_once('=') {
            command.env(name.trim(), value.trim());
        }
    }
}

/// The builds `E2E_PROXY_BIN` names: `path` (measured as "proxy") or `name=path,…`.
pub fn named_builds() -> Option<Vec<(&'static str, String)>> {
    let list = std::env::var("E2E_PROXY_BIN").ok()?;
    let builds = list.split(',').map(|entry| match entry.split_once('=') {
        // Leaked: a handful of names for the life of the bench process.
        Some((name, path)) => (&*Box::leak(name.trim().into()), path.trim().to_owned()),
        None => ("proxy", entry.trim().to_owned()),
    });
    Some(builds.collect())
}

/// The binary the single-build measurements start: the last in `E2E_PROXY_BIN`, else the
/// glibc release build.
pub fn default_binary() -> String {
    named_builds()
        .and_then(|builds| builds.into_iter().next_back())
        .map_or_else(
            || env!("CARGO_BIN_EXE_openrouter-proxy").to_owned(),
            |(_, path)| path,
        )
}

/// The proxy `binary`, started the way users run it, with `extra` settings.
pub fn start_proxy(binary: &str, upstream: &str, extra: &[(&str, &str)]) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("port")
        .port();
    let mut command = Command::new(binary);
    proxy_env(&mut command, upstream);
    let mut child = command
        .envs(extra.iter().copied())
        .env("UVICORN_PORT", port.to_string())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy starts");
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the proxy did not start listening");
}

/// This executable in `--mock` mode, as its own process.
pub fn spawn_mock() -> (Child, u16) {
    spawn_ready(Command::new(std::env::current_exe().expect("own path")).arg("--mock"))
}

/// Spawns a child that prints `ready <port>` first, and returns it with the port.
pub fn spawn_ready(command: &mut Command) -> (Child, u16) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let mut line = String::new();
    // Read byte by byte so nothing after the first line is buffered away from later readers.
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut byte = [0u8; 1];
    while std::io::Read::read(stdout, &mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        line.push(char::from(byte[0]));
    }
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .expect("ready <port>");
    (child, port)
}

/// Resident memory of process `pid`, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// CPU time (user + system) process `pid` has used, in seconds (100 Hz ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// CPU time process `pid` has used in the kernel, in seconds.
pub fn kernel_cpu_seconds(pid: u32) -> f64 {
    cpu_split(pid).1
}

/// CPU seconds `pid` has used so far (all its threads), in user space and in the kernel.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime are the 14th and 15th fields; the command name before them is in
    // parentheses and may hold spaces, so count from the ")".
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// Established TCP connections the processes `pids` hold to 127.0.0.1:`port`: their socket
/// descriptors matched against `/proc/net/tcp`.
pub fn connections_to(pids: &[u32], port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // rem_address, st (01: established), inode.
            fields.len() > 9
                && fields[2] == remote
                && fields[3] == "01"
                && inodes.contains(fields[9])
        })
        .count()
}

/// Context switches (voluntary and not) of every thread of process `pid` so far.
pub fn context_switches(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum()
}
