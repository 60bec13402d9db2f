//! The C reference: nginx as a plain reverse proxy in front of the same mock
//! (`proxy_buffering off`, keep-alive on both sides, no access log, one worker
//! per core), measured in the same run as the proxy. Skipped (and said) where
//! nginx is not installed (`apt-get install nginx`) or `E2E_NGINX=0`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nginx and the directory holding its configuration and temporary files.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers: a SIGKILL would leave them running
    /// as orphans, holding their connections and memory through the rest of the run.
    fn drop(&mut self) {
        let workers = tree(self.pid());
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..500 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in workers {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait();
    }
}

/// nginx proxying to the mock on `upstream_port`, or `None` (said) when it cannot run.
/// With `tls_ca`, the mock speaks TLS: nginx verifies it against that CA and keeps a pool
/// of HTTP/1.1 TLS connections (`proxy_pass` speaks nothing else upstream).
pub fn start(upstream_port: u16, tls_ca: Option<&std::path::Path>) -> Option<Nginx> {
    if std::env::var("E2E_NGINX").is_ok_and(|v| v == "0") {
        return None;
    }
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(binary) = binary else {
        progress!("nginx is not installed (apt-get install nginx): no nginx column");
        return None;
    };
    let dir = tempfile::tempdir().ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let upstream = match tls_ca {
        None => "proxy_pass http://mock;".to_owned(),
        Some(ca) => format!(
            "proxy_pass https://mock;
      proxy_ssl_trusted_certificate {};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;",
            ca.display()
        ),
    };
    let conf = format!(
        "worker_processes {workers};
error_log stderr error;
pid {dir}/nginx.pid;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 40000;
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream mock {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    keepalive_requests 1000000;
    location / {{
      {upstream}
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
",
        dir = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut nginx = Nginx {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(nginx);
        }
        if nginx.child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    progress!("nginx did not start: no nginx column");
    let _ = nginx.child.kill();
    None
}

/// Resident memory of `pid` and its children (nginx's workers), in MB.
pub fn rss_tree_mb(pid: u32) -> f64 {
    over_tree(pid, crate::procs::rss_mb)
}

/// CPU seconds of `pid` and its children (nginx's workers).
pub fn cpu_tree_seconds(pid: u32) -> f64 {
    over_tree(pid, crate::procs::cpu_seconds)
}

/// Kernel CPU seconds of `pid` and its children.
pub fn kernel_cpu_tree_seconds(pid: u32) -> f64 {
    over_tree(pid, crate::procs::kernel_cpu_seconds)
}

/// Context switches of `pid` and its children (nginx's workers).
pub fn context_switches_tree(pid: u32) -> f64 {
    over_tree(pid, crate::procs::context_switches)
}

/// `figure` of `pid` plus its children's.
fn over_tree(pid: u32, figure: fn(u32) -> f64) -> f64 {
    tree(pid).into_iter().map(figure).sum()
}

/// `pid` and its children.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent pid is the fourth field, after the ")" that ends the command name.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}
