//! What is measured against direct: the proxy's glibc build, its static musl build (the
//! one the README tells people to run) and nginx, each its own process; and pinning them
//! all to one CPU for the pinned latency rows.

use std::process::{Child, Command, Stdio};

use crate::load::Target;
use crate::nginx::{self, Nginx};
use crate::procs::{self, start_proxy};

/// Where the musl build is when `cargo build --release --target x86_64-unknown-linux-musl` made it.
const MUSL_BUILD: &str = "target/x86_64-unknown-linux-musl/release/openrouter-proxy";

/// One process (tree) in front of the mock.
pub struct Contender {
    pub name: &'static str,
    pub target: Target,
    pub pid: u32,
    /// nginx is a master and its workers; the proxy one process.
    tree: bool,
    proxy: Option<Child>,
    /// Stops nginx when dropped.
    _nginx: Option<Nginx>,
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(child) = &mut self.proxy {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a contender's RSS from another task.
#[derive(Clone, Copy)]
pub struct RssReader {
    pid: u32,
    tree: bool,
}

impl RssReader {
    /// Resident memory in MB.
    pub fn read(self) -> f64 {
        if self.tree {
            nginx::rss_tree_mb(self.pid)
        } else {
            procs::rss_mb(self.pid)
        }
    }
}

impl Contender {
    /// nginx in front of the mock.
    pub fn nginx(nginx: Nginx) -> Contender {
        Contender {
            name: "nginx",
            target: Target::nginx(nginx.port),
            pid: nginx.pid(),
            tree: true,
            proxy: None,
            _nginx: Some(nginx),
        }
    }

    /// The proxy `binary` in front of `upstream`, with `extra` settings.
    pub fn proxy(
        name: &'static str,
        binary: &str,
        upstream: &str,
        extra: &[(&str, &str)],
    ) -> Contender {
        let (child, port) = start_proxy(binary, upstream, extra);
        Contender {
            name,
            target: Target::proxy(port),
            pid: child.id(),
            tree: false,
            proxy: Some(child),
            _nginx: None,
        }
    }

    /// Resident memory in MB.
    pub fn rss(&self) -> f64 {
        self.rss_reader().read()
    }

    pub fn rss_reader(&self) -> RssReader {
        RssReader {
            pid: self.pid,
            tree: self.tree,
        }
    }

    /// CPU seconds used so far.
    pub fn cpu(&self) -> f64 {
        if self.tree {
            nginx::cpu_tree_seconds(self.pid)
        } else {
            procs::cpu_seconds(self.pid)
        }
    }

    /// CPU seconds used so far in the kernel (system calls, and the TCP work they do).
    pub fn kernel_cpu(&self) -> f64 {
        if self.tree {
            nginx::kernel_cpu_tree_seconds(self.pid)
        } else {
            procs::kernel_cpu_seconds(self.pid)
        }
    }

    /// Context switches of all its threads so far.
    pub fn context_switches(&self) -> f64 {
        if self.tree {
            nginx::context_switches_tree(self.pid)
        } else {
            procs::context_switches(self.pid)
        }
    }

    /// Its process ids (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        if self.tree {
            nginx::tree(self.pid)
        } else {
            vec![self.pid]
        }
    }
}

/// nginx (when installed), the glibc build, and the musl build (when built; said when not).
/// `E2E_PROXY_BIN=path` replaces both builds with one binary, measured as "proxy";
/// `E2E_PROXY_BIN=name=path,name=path` with several (an allocator experiment, an older build).
pub fn start(upstream: &str, mock_port: u16, smoke: bool) -> Vec<Contender> {
    let mut all = Vec::new();
    // The smoke run under `cargo test` only checks the bench works: the glibc build alone.
    if !smoke {
        if let Some(nginx) = nginx::start(mock_port, None) {
            all.push(Contender::nginx(nginx));
        }
    }
    let builds: Vec<(&'static str, String)> = if let Some(builds) = procs::named_builds() {
        builds
    } else {
        let mut builds = vec![("glibc", env!("CARGO_BIN_EXE_openrouter-proxy").to_owned())];
        let musl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MUSL_BUILD);
        if musl.exists() {
            if !smoke {
                builds.push(("musl", musl.display().to_string()));
            }
        } else {
            progress!("no musl build at {MUSL_BUILD} (cargo build --release --target x86_64-unknown-linux-musl): no musl column");
        }
        builds
    };
    for (name, binary) in builds {
        all.push(Contender::proxy(name, &binary, upstream, &[]));
    }
    all
}

/// The build users run: the musl one when built, else the last of `E2E_PROXY_BIN` or the
/// glibc one; with its name.
pub fn shipped() -> (&'static str, String) {
    let musl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MUSL_BUILD);
    if procs::named_builds().is_none() && musl.exists() {
        ("musl", musl.display().to_string())
    } else {
        ("proxy", procs::default_binary())
    }
}

/// Pins every thread of `pids` to `cpus` (a `taskset` list such as `0` or `0-1`);
/// false when `taskset` is missing or refuses.
pub fn pin(pids: &[u32], cpus: &str) -> bool {
    pids.iter().all(|pid| {
        Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Every CPU, as a `taskset` list.
pub fn all_cpus() -> String {
    let n = std::thread::available_parallelism().map_or(1, usize::from);
    format!("0-{}", n - 1)
}
